"""The storm sweep's judging (pure): one run's analysis against the figures its draw sets.

`judge` turns a run's results (loadtest.analysis) into Checks, `void_reasons` says when a run
measured the machine rather than Sluice, `run_figures` keeps the numbers the table and the
distribution show, and `exit_code` is the sweep's verdict over every run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .figures import CONNECTION_ERROR, TIMEOUT, Check, is_explicit_answer
from .sweep_draw import POLITE, Draw, cold_start_allowance, drain_bound

# --- the figures -----------------------------------------------------------------------------
GOODPUT_MIN = 0.9
GOODPUT_WINDOW = 1.0  # s
FRESH_SUCCESS_MIN = 0.995
P99_SERVICE_FACTOR = 2.0
P99_MARGIN_MS = 50.0
STEP_FOLLOW_S = 2.0
BUSY_MIN = 0.9  # after a doubling: mean busy / workers
TIMEOUT_JUDGED_FROM = 1.0  # s: clients with a shorter timeout may time out
LAG_VOID_MS = 50.0
ETA_READ_AT = 2.0  # s after the release: the drain ETA /status showed then is recorded
ETA_TOLERANCE = 0.25  # issue 19: within 25 % of the drain left, in 90 % of the polite runs
VOID_SHARE_MAX = 0.1  # at most 4 of 40


def _workers_at(t: float, d: Draw, step_t: float | None) -> int:
    if step_t is None or d.step_workers is None or t < step_t:
        return d.workers
    return d.step_workers


def _step_time(result: Mapping[str, Any], d: Draw) -> float | None:
    """When the step happened (s from t0): the backend's record, else the plan."""
    if d.step == "none":
        return None
    for be in (result.get("backends") or {}).values():
        steps = be.get("steps") or []
        if steps:
            return float(steps[0][0])
    return d.step_at


def backlog_end(result: Mapping[str, Any], d: Draw, step_t: float | None) -> float | None:
    """Seconds from t0 at which less than 1 s of C was left open in the backlog (None: never,
    within the run)."""
    series = (result.get("backlog") or {}).get("series") or {}
    width = float(series.get("bin_s", 0.1))
    for i, left in enumerate(series.get("open") or []):
        t = i * width
        if left < _workers_at(t, d, step_t) / d.service_time * GOODPUT_WINDOW:
            return t
    return None


def goodput_windows(
    result: Mapping[str, Any], d: Draw, initial: int
) -> list[tuple[float, float, float]]:
    """(start s from t0, backlog successes, target (C - λ₀)) per 1 s window from the end of the
    cold-start allowance until less than 1 s of C is left in the backlog; a window touching the
    2 s after a step is held to the lower of the two capacities."""
    series = (result.get("backlog") or {}).get("series") or {}
    width = float(series.get("bin_s", 0.1))
    ok: list[int] = list(series.get("ok") or [])
    step_t = _step_time(result, d)
    end = backlog_end(result, d, step_t)
    n_bins = len(ok) if end is None else min(len(ok), round(end / width))
    per = round(GOODPUT_WINDOW / width)
    first = math.ceil(cold_start_allowance(d, initial) / width - 1e-9)
    out = []
    for i in range(first, n_bins - per + 1, per):
        lo, hi = i * width, (i + per) * width
        if step_t is None or hi <= step_t:
            cap = d.capacity
        elif lo >= step_t + STEP_FOLLOW_S:
            cap = d.capacity_after
        else:
            cap = min(d.capacity, d.capacity_after)
        out.append((round(lo, 3), float(sum(ok[i : i + per])), cap - d.fresh_rate))
    return out


def _answers_check(result: Mapping[str, Any]) -> Check:
    after: Mapping[str, int] = result.get("answers_after_t0") or {}
    ignored = ("200", TIMEOUT, CONNECTION_ERROR)
    bad = sorted(
        ((c, n) for c, n in after.items() if c not in ignored and n and not is_explicit_answer(c)),
        key=lambda cn: (-cn[1], cn[0]),
    )
    explicit = sum(n for c, n in after.items() if c not in ignored and is_explicit_answer(c))
    return Check(
        "non-200 explicit (§4 table)",
        ", ".join(f"{c} \u00d7{n}" for c, n in bad) if bad else f"all ({explicit} explicit)",
        "reason table only",
        not bad,
    )


def _queue_check(result: Mapping[str, Any], d: Draw) -> Check:
    step_t = _step_time(result, d)
    top = max(d.workers, d.step_workers or d.workers)
    worst: tuple[float, int, int] | None = None  # (over by, queue, workers)
    peak_exact = 0
    for be in (result.get("backends") or {}).values():
        peak_exact = max(peak_exact, int(be.get("peak_queue") or 0))
        for t, _busy, queued in be.get("samples_after_t0") or []:
            if step_t is not None and step_t <= t < step_t + STEP_FOLLOW_S:
                continue
            w = _workers_at(t, d, step_t)
            if queued > w and (worst is None or queued - w > worst[0]):
                worst = (queued - w, queued, w)
    ok = peak_exact <= top and worst is None
    measured = f"peak {peak_exact}"
    if worst is not None:
        measured += f"; {worst[1]} > {worst[2]} workers in force"
    target = f"≤ {d.workers}" if step_t is None else f"≤ workers in force ({d.workers}→{top})"
    return Check("backend queue ≤ one round", measured, target, ok)


def _goodput_check(result: Mapping[str, Any], d: Draw, initial: int) -> Check:
    windows = goodput_windows(result, d, initial)
    target = f"≥ {GOODPUT_MIN:g} \u00d7 (C - λ₀) per 1 s"
    if not windows:
        return Check("backlog goodput", "no full window to judge", target, True)
    worst = min(windows, key=lambda w: w[1] / w[2])
    ratio = worst[1] / worst[2]
    return Check(
        "backlog goodput",
        f"min {ratio:.2f} at +{worst[0]:g} s ({len(windows)} windows)",
        target,
        ratio >= GOODPUT_MIN,
    )


def _zero_check(result: Mapping[str, Any], d: Draw, code: str, figure: str) -> Check:
    n = int((result.get("answers_after_t0") or {}).get(code, 0))
    if d.timeout < TIMEOUT_JUDGED_FROM:
        return Check(figure, f"{n} (T {d.timeout:g} s < 1 s: not judged)", "0 if T ≥ 1 s", True)
    return Check(figure, str(n), "0", n == 0)


def _fresh_checks(result: Mapping[str, Any], d: Draw) -> list[Check]:
    after: Mapping[str, Any] = (result.get("fresh") or {}).get("after") or {}
    n = int(after.get("n") or 0)
    p99_max = P99_SERVICE_FACTOR * d.service_time * 1000.0 + P99_MARGIN_MS
    if d.fresh_rate <= 0 or n == 0:
        return [Check("fresh success", "no fresh traffic", f"≥ {FRESH_SUCCESS_MIN:.1%}", True)]
    s = after.get("success")
    p99 = after.get("p99_ms")
    return [
        Check(
            "fresh success",
            "—" if s is None else f"{s:.2%} ({after.get('ok', 0)}/{n})",
            f"≥ {FRESH_SUCCESS_MIN:.1%}",
            s is not None and s >= FRESH_SUCCESS_MIN,
        ),
        Check(
            "fresh p99",
            "—" if p99 is None else f"{p99:.0f} ms",
            f"≤ 2 \u00d7 {d.service_time * 1000:.0f} + 50 = {p99_max:.0f} ms",
            p99 is not None and p99 <= p99_max,
        ),
    ]


def _polite_checks(result: Mapping[str, Any], d: Draw, initial: int) -> list[Check]:
    b: Mapping[str, Any] = result.get("backlog") or {}
    n, ok = int(b.get("n") or 0), int(b.get("succeeded") or 0)
    fresh: Mapping[str, Any] = result.get("fresh") or {}
    failed = 0
    for part in ("before", "after"):
        f = fresh.get(part) or {}
        failed += int(f.get("n") or 0) - int(f.get("ok") or 0) - int(f.get("unfinished") or 0)
    bound = drain_bound(d, initial)
    allowance = cold_start_allowance(d, initial)
    drain = b.get("drain_s")
    return [
        Check("backlog succeeded", f"{ok}/{n}", "all", n > 0 and ok == n),
        Check("fresh workflows failed", str(failed), "0", failed == 0),
        Check(
            "drain",
            "not drained" if drain is None else f"{drain:.2f} s ({drain / bound:.2f} of bound)",
            f"≤ 1.2 \u00d7 {d.ideal_drain:.2f} + {allowance:.2f} = {bound:.2f} s",
            drain is not None and drain <= bound,
        ),
    ]


def _step_check(result: Mapping[str, Any], d: Draw) -> Check | None:
    step_t = _step_time(result, d)
    if step_t is None or d.step_workers is None:
        return None
    end = backlog_end(result, d, step_t)
    lo = step_t + STEP_FOLLOW_S
    samples = [
        s
        for be in (result.get("backends") or {}).values()
        for s in be.get("samples_after_t0") or []
        if lo <= s[0] and (end is None or s[0] < end)
    ]
    w = d.step_workers
    if d.step == "halve":
        target = f"queue ≤ {w} from +{lo:.1f} s"
        if len(samples) < 10:
            return Check("after the halving", "window too short to judge", target, True)
        worst = max(s[2] for s in samples)
        return Check("after the halving", f"max queue {worst}", target, worst <= w)
    target = f"mean busy ≥ {BUSY_MIN:.0%} of {w} from +{lo:.1f} s"
    if len(samples) < 10:
        return Check("after the doubling", "window too short to judge", target, True)
    mean_busy = sum(s[1] for s in samples) / len(samples)
    return Check(
        "after the doubling",
        f"mean busy {mean_busy:.1f} ({mean_busy / w:.0%})",
        target,
        mean_busy >= BUSY_MIN * w,
    )


def judge(result: Mapping[str, Any], d: Draw, initial: int) -> list[Check]:
    """The figures of one sweep run (its analysis results dict) for draw `d`."""
    if "unavailable" in result:
        reason = str(result["unavailable"]).strip().splitlines()
        return [Check("run", "unavailable: " + (reason[0] if reason else "?"), "ran", False)]
    checks: list[Check] = []
    if d.kind in POLITE:
        checks += _polite_checks(result, d, initial)
    checks.append(_answers_check(result))
    checks.append(_queue_check(result, d))
    checks.append(_goodput_check(result, d, initial))
    checks.append(_zero_check(result, d, TIMEOUT, "client timeouts"))
    checks.append(_zero_check(result, d, CONNECTION_ERROR, "connection errors"))
    checks += _fresh_checks(result, d)
    step = _step_check(result, d)
    if step is not None:
        checks.append(step)
    return checks


def void_reasons(result: Mapping[str, Any]) -> list[str]:
    """Why a run measured the machine rather than Sluice (empty: it is valid)."""
    if "unavailable" in result:
        return []
    v: Mapping[str, Any] = result.get("validity") or {}
    out = []
    lag = v.get("loop_lag_max_ms")
    if lag is not None and lag > LAG_VOID_MS:
        out.append(f"generator loop lag {lag:.0f} ms > {LAG_VOID_MS:.0f} ms")
    if v.get("dropped_arrivals"):
        out.append(f"{v['dropped_arrivals']} arrivals dropped by the generator")
    b: Mapping[str, Any] = result.get("backlog") or {}
    prepared, n = b.get("release_prepared"), int(b.get("n") or 0)
    if prepared is not None and prepared < n:
        # Their connections were gone: the release was a connect storm of the generator's.
        out.append(f"release: {prepared} of {n} backlog requests prepared")
    return out


@dataclass
class RunOutcome:
    """One run of the sweep: its draw, figures and verdict."""

    draw: Draw
    checks: list[Check]
    void: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def verdict(self) -> str:
        """PASS, FAIL or VOID."""
        if self.void:
            return "VOID"
        return "PASS" if all(c.ok for c in self.checks) else "FAIL"


def eta_after_release(result: Mapping[str, Any]) -> tuple[float, float | None] | None:
    """The storm region's Sluice's first /status sample from ETA_READ_AT after t0 (the
    release): its time after t0 and the drain ETA it showed (None outside RECOVERY, or with no
    drain pace); None when no sample was taken then."""
    home = str((result.get("params") or {}).get("home"))
    regions: Mapping[str, Any] = (result.get("timeline") or {}).get("regions") or {}
    proxy: Mapping[str, Any] = (regions.get(home) or {}).get("proxy") or {}
    times: Sequence[float] = proxy.get("t") or []
    etas: Sequence[float | None] = proxy.get("eta_s") or [None] * len(times)
    for t, eta in zip(times, etas, strict=True):
        if t >= ETA_READ_AT:
            return t, eta
    return None


def _eta_figures(result: Mapping[str, Any], drain: float | None) -> dict[str, Any]:
    """The ETA shown ETA_READ_AT after the release, against the drain that was really left."""
    shown = eta_after_release(result)
    at, eta = shown if shown is not None else (None, None)
    left = None if drain is None or at is None else drain - at
    return {
        "eta_read_at_s": at,
        "eta_s": eta,
        "drain_left_s": left,
        "eta_of_drain_left": None if eta is None or left is None or left <= 0 else eta / left,
    }


def run_figures(result: Mapping[str, Any], d: Draw, initial: int) -> dict[str, Any]:
    """The numbers of a run the table and the distribution show."""
    if "unavailable" in result:
        return {}
    b: Mapping[str, Any] = result.get("backlog") or {}
    drain = b.get("drain_s")
    windows = goodput_windows(result, d, initial)
    after: Mapping[str, Any] = (result.get("fresh") or {}).get("after") or {}
    v: Mapping[str, Any] = result.get("validity") or {}
    cpu: Mapping[str, float] = v.get("cpu_share") or {}
    answers: Mapping[str, int] = result.get("answers_after_t0") or {}
    peak = max((int(be.get("peak_queue") or 0) for be in (result.get("backends") or {}).values()),
               default=0)  # fmt: skip
    p99 = after.get("p99_ms")
    return {
        "backlog_ok": b.get("succeeded"),
        "backlog_n": b.get("n"),
        "drain_s": drain,
        "drain_of_bound": None
        if drain is None or d.kind not in POLITE
        else drain / drain_bound(d, initial),
        "goodput_min": min((w[1] / w[2] for w in windows), default=None),
        "goodput_windows": len(windows),
        "fresh_success": after.get("success") if d.fresh_rate > 0 else None,
        "fresh_p99_ms": p99,
        "fresh_p99_of_bound": None
        if p99 is None or d.fresh_rate <= 0
        else p99 / (P99_SERVICE_FACTOR * d.service_time * 1000.0 + P99_MARGIN_MS),
        "peak_queue_of_workers": peak / max(d.workers, d.step_workers or d.workers),
        "timeouts": int(answers.get(TIMEOUT, 0)),
        "connection_errors": int(answers.get(CONNECTION_ERROR, 0)),
        "cpu_fleet": cpu.get("fleet"),
        "cpu_sluice": next((x for k, x in cpu.items() if k.startswith("sluice")), None),
        "lag_p99_ms": v.get("loop_lag_p99_ms"),
        "lag_max_ms": v.get("loop_lag_max_ms"),
        "machine_busy_cores": v.get("machine_busy_cores"),
        **_eta_figures(result, drain),
    }


def max_void(runs: int) -> int:
    """Void runs allowed: a tenth (4 of 40)."""
    return int(runs * VOID_SHARE_MAX)


def exit_code(outcomes: Sequence[RunOutcome]) -> int:
    """0 when every valid run passed and no more than a tenth were void; 1 otherwise."""
    if not outcomes:
        return 1
    n_void = sum(1 for o in outcomes if o.void)
    failed = any(o.verdict == "FAIL" for o in outcomes)
    return 1 if failed or n_void > max_void(len(outcomes)) else 0
