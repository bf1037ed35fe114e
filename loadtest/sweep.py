"""`python -m loadtest sweep`: the seeded storm sweep (issue 16, DESIGN.md §6 "Robustness").

Seeds 1..40 are fixed (`--runs 40` runs exactly those), so nobody shops for a passing seed.
Each seed draws one `reopen` scenario at random (`random.Random(seed)`, every parameter drawn in
a fixed order on every try, redrawn until the draw meets every bound below), builds it in memory
(the schema of `loadtest/scenarios/reopen.yaml`), runs Sluice's arm of it with the runner and
analysis the other commands use, and judges it on the figures below.

The draws (`draw`):
- backend: workers 5-100, service time 20-300 ms (both log-uniform), C = workers / service
  time within 50-1,000 req/s; thrash 0.5-2 (the simulator's default, 0.5, is the weakest);
- a backlog of 2-10 s of C (N), steady fresh traffic λ₀ of 0-60 % of C (none in 15 % of the
  runs; after a halving, of the halved C, so the backlog can drain at all); warm-up 0-60 s
  (none, a cold start, in 20 % of the runs); callers 1-50 (the Sluice config's four known
  callers first, the rest unknown to it), weights 1-4;
- client kind: `naive` (retry delay 0.05-1 s, 3 retries), `sdk`, `sdk-noheader`, the real SDK
  (`azure-sdk`) and `hostile` (its retries capped at up to 3 x C); client timeout 0.5-5 s;
- a capacity step in the middle of the drain (N / (C - λ₀) / 2 after the release): the workers
  halved or doubled. Half the draws ask for one, but only a drain ≥ 6 s has a middle to judge
  (shorter ones are redrawn), so about a quarter of the runs step (11 of seeds 1-40).
- Bounds that keep the machine out of the measurement: the attempts the clients offer, at worst
  (`offered_at_worst`: λ₀ plus what the backlog sends in its first second if Sluice refused
  every attempt at once), ≤ 2,000/s; the real SDK ≤ 2,000 clients (N + λ₀ · timeout) and C ≤ 400.

The figures (`judge`; targets below, every valid run on each):
- polite clients (`sdk`, `sdk-noheader`, `azure-sdk`): every backlog workflow succeeds, no fresh
  workflow fails, drain ≤ 1.20 x the ideal drain + the cold-start allowance 2 x service time x
  log₂(max(1, workers / limiter.initial)) (limiter.initial from the Sluice config run); the ideal
  drain is N / (C - λ₀), piecewise across a capacity step;
- every kind: every non-200 from t0 on an explicit answer of the reason table (timeouts and
  connection errors are counted on their own); the backend's queue within one round of its
  workers (of the workers in force, outside the 2 s after a step); backlog goodput ≥ 0.9 x
  (C - λ₀) in each 1 s window from the allowance's end until less than 1 s of C is left open in
  the backlog; with a timeout ≥ 1 s, no client timeout and no connection error; fresh traffic
  (if any) ≥ 99.5 % success with p99 ≤ 2 x service time + 50 ms; after a step, from 2 s after it
  until the backlog is under 1 s of C: no queue past the halved workers / the doubled workers
  ≥ 90 % busy on average.
- A run whose load generator's event-loop lag passes 50 ms at any sample from its start to its
  end, that dropped arrivals, or whose release was not N prepared writes (their connections
  lost before it) is void; at most a tenth of the runs (4 of 40) may be. The maximum lag, not
  a percentile: one 330 ms stall at the release (a connect storm, before the backlog was
  spawned late) kept the p99 at 4 ms but left the backend idle for half a second.

Output: a table (one row per run: seed, every drawn parameter, the figures, the CPU of the
generator and of Sluice, the verdict), the distribution of each figure, `sweep.txt`,
`sweep.json` (everything), per run `sweep-NN.json` (the analysis) and `.png`, and the drawn
scenarios as files (`scenarios/sweep-NN.yaml` beside the Sluice config run, so
`python -m loadtest --scenario …/sweep-NN.yaml --arm sluice` replays one). Exit 1 when a valid
run failed a figure, a run could not run, or too many were void.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from .analysis import percentile
from .figures import CONNECTION_ERROR, TIMEOUT, Check, is_explicit_answer
from .runner import FLEET_STARTUP, ArmPlan, backlog_lead, run_arm_sync
from .scenario import SCENARIO_DIR, Scenario

SWEEP_RUNS = 40  # seeds 1..40, fixed
DEFAULT_SLUICE_CONFIG = SCENARIO_DIR / "reopen.sluice.yaml"
SCENARIO_SCHEMA = SCENARIO_DIR / "reopen.yaml"  # the schema the drawn scenarios follow
ARM = "sluice"

# --- the draw's bounds ---------------------------------------------------------------------
WORKERS = (5, 100)
SERVICE_TIME = (0.020, 0.300)  # s
CAPACITY = (50.0, 1000.0)  # req/s
THRASH = (0.5, 2.0)  # the simulator's default (0.5) is the lower bound
BACKLOG_S = (2.0, 10.0)  # N in seconds of C
FRESH_SHARE = (0.0, 0.6)  # λ₀ / C
P_NO_FRESH = 0.15
WARMUP = (0.0, 60.0)  # s
P_COLD = 0.2
CALLERS = (1, 50)
CALLER_WEIGHT = (1, 4)
KINDS: tuple[str, ...] = ("naive", "sdk", "sdk-noheader", "azure-sdk", "hostile")
POLITE: tuple[str, ...] = ("sdk", "sdk-noheader", "azure-sdk")
AZURE_SDK = "azure-sdk"
NAIVE_RETRY_DELAY = (0.05, 1.0)  # s
NAIVE_RETRIES = 3
TIMEOUT_S = (0.5, 5.0)
P_STEP = 0.5  # half the draws ask for a step; halving and doubling equally often
STEP_MIN_DRAIN = 6.0  # s: a step needs a drain this long (a middle after the allowance)
OFFERED_MAX = 2000.0  # attempts/s the clients may offer at worst
AZURE_CLIENTS_MAX = 2000
AZURE_CAPACITY_MAX = 400.0
HOSTILE_CAP_FACTOR = 3.0  # hostile retries capped at up to 3 x C (≥ 1 x C)
SDK_FIRST_RETRY_MIN = 0.8 * (1 - 0.2)  # s: the SDK profiles' first backoff, at its shortest
MAX_TRIES = 10_000
CALLER_NAMES: tuple[str, ...] = (
    "orchestrator-a",
    "orchestrator-b",
    "orchestrator-c",
    "orchestrator-d",
    *(f"orchestrator-{i:02d}" for i in range(5, CALLERS[1] + 1)),
)

# --- the run's length ------------------------------------------------------------------------
OBSERVE_FACTOR = 2.0  # observe 2 x the ideal drain + the allowance + a margin …
OBSERVE_MARGIN = 6.0
OBSERVE_MIN = 12.0
OBSERVE_MAX = 60.0  # … capped (the bound 1.2 x drain + allowance always fits: ≤ ~33 s)
GRACE = 1.5
LAST_WINDOW = 5.0
RUN_OVERHEAD_S = 7.0  # start-up, check-config, teardown, analysis, plot (measured: ~6 s)

# --- the figures -----------------------------------------------------------------------------
DRAIN_FACTOR = 1.20
GOODPUT_MIN = 0.9
GOODPUT_WINDOW = 1.0  # s
FRESH_SUCCESS_MIN = 0.995
P99_SERVICE_FACTOR = 2.0
P99_MARGIN_MS = 50.0
STEP_FOLLOW_S = 2.0
BUSY_MIN = 0.9  # after a doubling: mean busy / workers
TIMEOUT_JUDGED_FROM = 1.0  # s: clients with a shorter timeout may time out
LAG_VOID_MS = 50.0
VOID_SHARE_MAX = 0.1  # at most 4 of 40


@dataclass(frozen=True)
class Draw:
    """One seed's scenario parameters (times in seconds, rates in req/s)."""

    seed: int
    kind: str  # the client profile
    workers: int
    service_time: float
    thrash: float
    backlog_s: float
    backlog: int  # N
    fresh_share: float
    fresh_rate: float  # λ₀
    warmup: float
    callers: tuple[tuple[str, int], ...]
    naive_retry_delay: float  # drawn every time; used by `naive` only
    timeout: float
    step: str  # "none", "halve", "double"
    step_workers: int | None
    step_at: float | None  # s after the release
    hostile_rate_cap: float
    offered: float  # attempts/s at worst (offered_at_worst)
    tries: int  # draws until this one met every bound

    @property
    def capacity(self) -> float:
        """C before any step."""
        return self.workers / self.service_time

    @property
    def capacity_after(self) -> float:
        """C after the step (C when there is none)."""
        return (self.step_workers or self.workers) / self.service_time

    @property
    def ideal_drain(self) -> float:
        """N over the spare capacity, piecewise across the step."""
        return ideal_drain(
            self.backlog, self.capacity, self.capacity_after, self.fresh_rate, self.step_at
        )


def ideal_drain(
    n: int, cap: float, cap_after: float, lam: float, step_at: float | None = None
) -> float:
    """Seconds N takes at C - λ₀, then (from `step_at`) at the stepped C - λ₀."""
    spare = cap - lam
    if step_at is None or n <= spare * step_at:
        return n / spare
    return step_at + (n - spare * step_at) / (cap_after - lam)


def attempts_in_first_second(kind: str, retry_delay: float, timeout: float) -> int:
    """Attempts one backlog workflow of `kind` can send in its first second if every attempt is
    refused at once (or times out) without a Retry-After it honours; `hostile` is capped apart."""
    if kind == "naive":
        cycle = min(retry_delay, timeout)  # 50 ms … after an error; at once after a timeout
        return 1 + min(NAIVE_RETRIES, math.ceil(1.0 / cycle - 1e-9) - 1)
    if kind in POLITE:
        return 1 + math.ceil(1.0 / SDK_FIRST_RETRY_MIN - 1e-9) - 1  # 2: backoff ≥ 0.64 s
    return 1


def offered_at_worst(kind: str, n: int, lam: float, retry_delay: float, timeout: float,
                     hostile_cap: float) -> float:  # fmt: skip
    """Attempts per second the clients offer at worst: λ₀ plus the backlog's first second."""
    if kind == "hostile":
        return lam + n + hostile_cap
    return lam + n * attempts_in_first_second(kind, retry_delay, timeout)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw(seed: int) -> Draw:
    """The scenario of `seed` (deterministic; see the module docstring for the bounds)."""
    rng = random.Random(seed)
    kind = rng.choice(KINDS)
    for tries in range(1, MAX_TRIES + 1):
        # Every parameter on every try, in this order, so a draw depends only on the seed.
        # Log-uniform, so C = workers / service time spreads over its whole range.
        workers = round(_log_uniform(rng, *WORKERS))
        service_time = round(_log_uniform(rng, *SERVICE_TIME), 3)
        thrash = round(rng.uniform(*THRASH), 2)
        backlog_s = round(rng.uniform(*BACKLOG_S), 2)
        no_fresh = rng.random() < P_NO_FRESH
        share = 0.0 if no_fresh else round(rng.uniform(*FRESH_SHARE), 3)
        cold = rng.random() < P_COLD
        warmup = 0.0 if cold else round(rng.uniform(*WARMUP), 1)
        n_callers = rng.randint(*CALLERS)
        retry_delay = round(rng.uniform(*NAIVE_RETRY_DELAY), 3)
        timeout = round(rng.uniform(*TIMEOUT_S), 2)
        step_u = rng.random()

        cap = workers / service_time
        if not CAPACITY[0] <= cap <= CAPACITY[1]:
            continue
        step = "none" if step_u >= P_STEP else ("halve" if step_u < P_STEP / 2 else "double")
        step_workers = {"none": None, "halve": workers // 2, "double": workers * 2}[step]
        cap_after = (step_workers or workers) / service_time
        cap_low, cap_high = min(cap, cap_after), max(cap, cap_after)
        lam = round(share * cap_low, 1)
        n = round(backlog_s * cap)
        drain0 = n / (cap - lam)
        step_at = None
        if step != "none":
            if drain0 < STEP_MIN_DRAIN:
                continue
            step_at = round(drain0 / 2, 1)
        hostile_cap = round(min(HOSTILE_CAP_FACTOR * cap_high, OFFERED_MAX - lam - n))
        if kind == "hostile" and hostile_cap < cap_high:
            continue
        offered = offered_at_worst(kind, n, lam, retry_delay, timeout, hostile_cap)
        if offered > OFFERED_MAX:
            continue
        if kind == AZURE_SDK and (
            cap_high > AZURE_CAPACITY_MAX or n + lam * timeout > AZURE_CLIENTS_MAX
        ):
            continue
        weights = random.Random(f"{seed}:callers")
        callers = tuple(
            (name, weights.randint(*CALLER_WEIGHT)) for name in CALLER_NAMES[:n_callers]
        )
        return Draw(
            seed=seed,
            kind=kind,
            workers=workers,
            service_time=service_time,
            thrash=thrash,
            backlog_s=backlog_s,
            backlog=n,
            fresh_share=share,
            fresh_rate=lam,
            warmup=warmup,
            callers=callers,
            naive_retry_delay=retry_delay,
            timeout=timeout,
            step=step,
            step_workers=step_workers,
            step_at=step_at,
            hostile_rate_cap=float(hostile_cap) if kind == "hostile" else 600.0,
            offered=round(offered, 1),
            tries=tries,
        )
    raise RuntimeError(f"seed {seed}: no draw met the bounds in {MAX_TRIES} tries")


def cold_start_allowance(d: Draw, initial: int) -> float:
    """2 x service time x log₂(max(1, workers / limiter.initial)): the limiter's slow start."""
    return 2.0 * d.service_time * math.log2(max(1.0, d.workers / initial))


def drain_bound(d: Draw, initial: int) -> float:
    """The polite clients' drain target: 1.20 x the ideal drain + the cold-start allowance."""
    return DRAIN_FACTOR * d.ideal_drain + cold_start_allowance(d, initial)


def observe_for(d: Draw, initial: int) -> float:
    """Seconds observed after the release: 2 x the ideal drain + the allowance + a margin,
    within [12, 60] and never shorter than the drain bound + 3 s."""
    allowance = cold_start_allowance(d, initial)
    want = OBSERVE_FACTOR * d.ideal_drain + allowance + OBSERVE_MARGIN
    want = min(OBSERVE_MAX, max(OBSERVE_MIN, want))
    return round(max(want, drain_bound(d, initial) + 3.0), 1)


def scenario_data(d: Draw, initial: int) -> dict[str, Any]:
    """The drawn scenario as the YAML document of `reopen.yaml`'s schema."""
    step = (
        {"at": f"{d.step_at * 1000:.0f}ms", "workers": d.step_workers}
        if d.step != "none" and d.step_at is not None
        else None
    )
    return {
        "name": f"sweep-{d.seed:02d}",
        "description": f"storm sweep, seed {d.seed}: {describe(d)}",
        "trigger": "reopen",
        "regions": ["east"],
        "backend": {
            "workers": d.workers,
            "service_time": f"{d.service_time * 1000:.0f}ms",
            "queue_limit": 1000,
            "thrash": d.thrash,
            "jitter": 0.1,
            "capacity_step": step,
        },
        "clients": {
            "profile": d.kind,
            "timeout": f"{d.timeout * 1000:.0f}ms",
            "naive_retries": NAIVE_RETRIES,
            "naive_retry_delay": f"{d.naive_retry_delay * 1000:.0f}ms",
            "hostile_retries": 50,
            "hostile_rate_cap": d.hostile_rate_cap,
            "retry_after_jitter": "100ms",
            "failover": False,
            "prewarm": True,
            "callers": [{"name": name, "weight": w} for name, w in d.callers],
        },
        "traffic": {"fresh_rate": d.fresh_rate, "backlog": d.backlog},
        "timing": {
            "warmup": f"{d.warmup * 1000:.0f}ms",
            "observe": f"{observe_for(d, initial) * 1000:.0f}ms",
            "last_window": f"{LAST_WINDOW:g}s",
            "grace": f"{GRACE:g}s",
        },
    }


def scenario_for(d: Draw, initial: int) -> Scenario:
    """The drawn scenario as an in-memory Scenario (validated like a file)."""
    return Scenario.model_validate(scenario_data(d, initial))


def expected_seconds(d: Draw, initial: int) -> float:
    """Rough wall time of one run."""
    sc = scenario_for(d, initial)
    t = sc.timing
    return FLEET_STARTUP + backlog_lead(sc) + t.warmup + t.observe + t.grace + RUN_OVERHEAD_S


def describe(d: Draw) -> str:
    """One line: the drawn parameters."""
    step = "" if d.step == "none" else f", {d.step} to {d.step_workers} at +{d.step_at:g} s"
    delay = f" delay {d.naive_retry_delay:g} s" if d.kind == "naive" else ""
    return (
        f"{d.kind}{delay}, T {d.timeout:g} s, {d.workers}\u00d7{d.service_time * 1000:.0f} ms "
        f"(C {d.capacity:.0f}), thrash {d.thrash:g}, N {d.backlog} ({d.backlog_s:g} s of C), "
        f"λ₀ {d.fresh_rate:g}, warm-up {d.warmup:g} s, {len(d.callers)} callers{step}"
    )


# --- judging (pure) ----------------------------------------------------------------------------
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
    width = series.get("bin_s", 0.1)
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
    }


# --- rendering -------------------------------------------------------------------------------
_COLUMNS = (
    "seed", "kind", "W", "st ms", "C", "thr", "N", "λ₀", "warm", "cl", "delay", "T",
    "step", "drain/bd", "gp min", "fresh", "p99 ms", "q/W", "TO", "CE", "gen%", "slc%",
    "lag", "verdict",
)  # fmt: skip


def _f(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def table_row(o: RunOutcome) -> list[str]:
    """One row of the table."""
    d, f = o.draw, o.figures
    step = "—" if d.step == "none" else f"{d.step[0]}{d.step_workers}@{d.step_at:g}"
    failed = [c.figure for c in o.checks if not c.ok]
    verdict = o.verdict + (": " + "; ".join(failed) if failed and not o.void else "")
    if o.void:
        verdict += ": " + "; ".join(o.void)
    return [
        str(d.seed),
        d.kind,
        str(d.workers),
        f"{d.service_time * 1000:.0f}",
        f"{d.capacity:.0f}",
        f"{d.thrash:g}",
        str(d.backlog),
        f"{d.fresh_rate:g}",
        f"{d.warmup:g}",
        str(len(d.callers)),
        f"{d.naive_retry_delay:g}" if d.kind == "naive" else "—",
        f"{d.timeout:g}",
        step,
        _f(f.get("drain_of_bound"), ".2f") if d.kind in POLITE else "—",
        _f(f.get("goodput_min"), ".2f"),
        _f(f.get("fresh_success"), ".2%"),
        _f(f.get("fresh_p99_ms"), ".0f"),
        _f(f.get("peak_queue_of_workers"), ".2f"),
        str(f.get("timeouts", "—")),
        str(f.get("connection_errors", "—")),
        _f(None if f.get("cpu_fleet") is None else f["cpu_fleet"] * 100, ".0f"),
        _f(None if f.get("cpu_sluice") is None else f["cpu_sluice"] * 100, ".0f"),
        _f(f.get("lag_max_ms"), ".0f"),
        verdict,
    ]


def render_table(outcomes: Sequence[RunOutcome]) -> str:
    """The table, one row per run, with a legend."""
    rows = [list(_COLUMNS)] + [table_row(o) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    legend = (
        "W workers, st service time, C = W/st req/s, thr thrash, N backlog, λ₀ fresh req/s, "
        "warm warm-up s (0: cold), cl callers,\ndelay naive retry delay s, T client timeout s, "
        "step h(alve)/d(ouble) to W at s after the release; drain/bd drain ÷ its bound "
        "(polite kinds), gp min lowest 1 s backlog goodput ÷ (C - λ₀), fresh success and p99 "
        "after t0,\nq/W peak backend queue ÷ workers, TO/CE client timeouts / connection "
        "errors from t0, gen%/slc% CPU of the generator / Sluice (% of a core), lag the "
        "generator's largest loop lag ms"
    )
    return "\n".join(lines) + "\n" + legend


def _dist(values: Sequence[float]) -> str:
    if not values:
        return "—"
    p50, p90 = percentile(values, 50), percentile(values, 90)
    return (
        f"min {min(values):.3g}  p50 {p50:.3g}  p90 {p90:.3g}  max {max(values):.3g}  "
        f"(n {len(values)})"
    )


def render_distribution(outcomes: Sequence[RunOutcome]) -> str:
    """Per figure: how many valid runs met it; the spread of the numbers behind them."""
    valid = [o for o in outcomes if not o.void]
    lines = ["figures met (valid runs):"]
    names: list[str] = []
    for o in valid:
        for c in o.checks:
            if c.figure not in names:
                names.append(c.figure)
    for name in names:
        judged = [c for o in valid for c in o.checks if c.figure == name]
        met = sum(c.ok for c in judged)
        lines.append(f"  {name:30s} {met}/{len(judged)}")
    lines.append("distribution (valid runs):")
    for key, label in (
        ("drain_of_bound", "drain ÷ bound (polite)"),
        ("goodput_min", "lowest backlog goodput ratio"),
        ("fresh_success", "fresh success"),
        ("fresh_p99_of_bound", "fresh p99 ÷ bound"),
        ("peak_queue_of_workers", "peak queue ÷ workers"),
        ("cpu_fleet", "generator CPU (cores)"),
        ("cpu_sluice", "Sluice CPU (cores)"),
        ("lag_max_ms", "generator lag max ms"),
        ("machine_busy_cores", "machine busy cores"),
    ):
        vals = [float(o.figures[key]) for o in valid if o.figures.get(key) is not None]
        lines.append(f"  {label:30s} {_dist(vals)}")
    kinds: dict[str, int] = {}
    for o in outcomes:
        kinds[o.draw.kind] = kinds.get(o.draw.kind, 0) + 1
    caps = [o.draw.capacity for o in outcomes]
    lines.append(
        "drawn: "
        + ", ".join(f"{k} \u00d7{n}" for k, n in sorted(kinds.items()))
        + f"; C {min(caps):.0f}-{max(caps):.0f}; cold starts "
        f"{sum(o.draw.warmup == 0 for o in outcomes)}; steps "
        f"{sum(o.draw.step == 'halve' for o in outcomes)} halved, "
        f"{sum(o.draw.step == 'double' for o in outcomes)} doubled"
    )
    n_void = len(outcomes) - len(valid)
    passed = sum(o.verdict == "PASS" for o in outcomes)
    lines.append(
        f"runs: {passed}/{len(valid)} valid runs pass every figure; {n_void} void "
        f"(at most {max_void(len(outcomes))} allowed)"
    )
    return "\n".join(lines)


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


# --- running ---------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """`1-4`, `3,7,9` or `1-3,10` → seeds (each ≥ 1, in order, no repeats)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"not a seed or range: {part!r}") from None
        if a < 1 or b < a:
            raise ValueError(f"bad seed range: {part!r}")
        seeds += [s for s in range(a, b + 1) if s not in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def limiter_initial(config: Path) -> int:
    """limiter.initial of the Sluice config the sweep runs."""
    from proxy.config import load_config

    return load_config(config).limiter.initial


def _hms(seconds: float) -> str:
    m, s = divmod(max(0, round(seconds)), 60)
    return f"{m} min {s:02d} s"


def _write_scenario(d: Draw, initial: int, config: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sweep-{d.seed:02d}.yaml"
    header = f"# storm sweep, seed {d.seed} (python -m loadtest sweep --seeds {d.seed})\n"
    path.write_text(
        header + yaml.safe_dump(scenario_data(d, initial), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    shutil.copyfile(config, folder / f"sweep-{d.seed:02d}.sluice.yaml")
    return path


def sweep(
    seeds: Sequence[int],
    out_dir: Path,
    sluice_config: Path = DEFAULT_SLUICE_CONFIG,
    plots: bool = True,
    draws_only: bool = False,
) -> int:
    """Run the sweep over `seeds`; prints and writes the table; returns the exit code."""
    initial = limiter_initial(sluice_config)
    draws = [draw(s) for s in seeds]
    expected = [expected_seconds(d, initial) for d in draws]
    print(
        f"Storm sweep (issue 16): {len(draws)} run(s), seeds {_seed_text(seeds)}; Sluice config "
        f"{sluice_config} (limiter.initial {initial}); sluice arm only.\n"
        + "\n".join(f"  seed {d.seed:2d}: {describe(d)}" for d in draws),
        flush=True,
    )
    if draws_only:
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"expected duration: about {_hms(sum(expected))}; do not load the machine meanwhile.\n"
        f"Output: {out_dir}\n",
        flush=True,
    )
    started = time.monotonic()
    outcomes: list[RunOutcome] = []
    results: list[dict[str, Any]] = []
    interrupted = False
    try:
        for i, d in enumerate(draws):
            print(f"=== run {i + 1}/{len(draws)}: seed {d.seed}: {describe(d)}", flush=True)
            t_run = time.monotonic()
            path = _write_scenario(d, initial, sluice_config, out_dir / "scenarios")
            plan = ArmPlan(scenario_for(d, initial), path, ARM, d.seed, 1.0, out_dir, sluice_config)
            res = run_arm_sync(plan)
            res["sweep"] = {"draw": asdict(d), "limiter_initial": initial}
            outcome = RunOutcome(
                d,
                judge(res, d, initial),
                void_reasons(res),
                run_figures(res, d, initial),
                time.monotonic() - t_run,
            )
            outcomes.append(outcome)
            results.append(res)
            (out_dir / f"sweep-{d.seed:02d}.json").write_bytes(
                orjson.dumps(res, option=orjson.OPT_NON_STR_KEYS)
            )
            if plots and "unavailable" not in res:
                from .plot import plot_scenario

                plot_scenario([res], out_dir / f"sweep-{d.seed:02d}.png")
            for c in outcome.checks:
                print(f"  {'PASS' if c.ok else 'FAIL'}  {c.figure}: {c.measured}  [{c.target}]")
            elapsed = time.monotonic() - started
            done_expected = sum(expected[: i + 1])
            left = sum(expected[i + 1 :]) * (elapsed / done_expected if done_expected else 1.0)
            print(
                f"  -> {outcome.verdict}"
                + (f" ({'; '.join(outcome.void)})" if outcome.void else "")
                + f" in {outcome.wall_s:.0f} s; ETA {_hms(left)} for {len(draws) - i - 1} more\n",
                flush=True,
            )
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; every process started for the run was stopped", file=sys.stderr)
    table = render_table(outcomes)
    dist = render_distribution(outcomes) if outcomes else "no run finished"
    head = f"storm sweep: seeds {_seed_text([o.draw.seed for o in outcomes])}, Sluice config "
    head += f"{sluice_config} (limiter.initial {initial}), {_hms(time.monotonic() - started)}"
    if interrupted:
        head += f" (interrupted after {len(outcomes)} of {len(draws)} runs)"
    text = head + "\n\n" + table + "\n\n" + dist + "\n"
    (out_dir / "sweep.txt").write_text(text, encoding="utf-8")
    (out_dir / "sweep.json").write_bytes(
        orjson.dumps(
            {
                "seeds": list(seeds),
                "sluice_config": str(sluice_config),
                "limiter_initial": initial,
                "interrupted": interrupted,
                "runs": [
                    {
                        "seed": o.draw.seed,
                        "draw": asdict(o.draw),
                        "expected_drain_s": o.draw.ideal_drain,
                        "drain_bound_s": drain_bound(o.draw, initial),
                        "cold_start_allowance_s": cold_start_allowance(o.draw, initial),
                        "verdict": o.verdict,
                        "void": o.void,
                        "checks": [asdict(c) for c in o.checks],
                        "figures": o.figures,
                        "wall_s": o.wall_s,
                        "result_file": f"sweep-{o.draw.seed:02d}.json",
                    }
                    for o in outcomes
                ],
                "exit_code": exit_code(outcomes),
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        )
    )
    print("\n" + text)
    print(f"wrote {out_dir / 'sweep.txt'}, {out_dir / 'sweep.json'}")
    if interrupted:
        return 130
    return exit_code(outcomes) if len(outcomes) == len(draws) else 1


def _seed_text(seeds: Sequence[int]) -> str:
    if not seeds:
        return "none"
    s = sorted(seeds)
    if s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}-{s[-1]}"
    return ",".join(str(x) for x in s)
