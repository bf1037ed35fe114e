"""The figures Sluice must reach (issues 4, 5, 15; DESIGN.md §6), checked on results dicts.

Pure functions, no I/O: each takes the results dict `analysis.analyze` produces for one arm
and says, per figure, what was measured, what the target is and whether it was met.

- `check_recovery`: the recovery figures (`reopen`, `backend-outage`). With `sdk`,
  `sdk-noheader` and `azure-sdk` clients: every backlog workflow succeeds, drain ≤ 1.20 · N/(C -
  λ₀), amplification ≤ 1.1, wasted work < 1 %; with `azure-sdk` (the real SDK, whose retries
  are its own) also no workflow exhausts its retries. With every profile: each backend's peak
  queue behind its workers ≤ one round of its workers, fresh success after t0 ≥ 99.5 %, fresh
  p99 after t0 ≤ 2 · before, no client timeouts, no connection errors, every other non-200 an
  explicit answer from the reason table of DESIGN.md §4 (`naive` and `hostile` may fail, but
  only explicitly). A fleet arm (issue 18) is held to the same, per backend for the queue, and
  its backends' served counts per worker within 10 % of each other while a backlog waits.
- `check_isolation`: `two-region`: the other region's local goodput changes by under 5 %, its
  local success stays ≥ 99.5 %, its p99 ≤ 2 · before; plus the storm region's recovery figures.
- `checks_for` picks the set for an arm (only the `sluice` arm has figures to reach);
  `render_checks` prints them, one line per figure per run, and a summary line.

The answer figures (timeouts, connection errors, the reason table) count attempts sent from t0
on (`answers_after_t0`), the window every recovery figure is measured in: before t0 of
`backend-outage` the backend is down, and its first fast 500s necessarily pass through before
Sluice can call it an outage. Answers before t0 that would have failed the figure are still
shown in the measured text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.contracts import REASONS, Reason

from .lb_analysis import SERVED_SPREAD_MAX

PROTECTED_ARM = "sluice"
DRAIN_PROFILES: tuple[str, ...] = ("sdk", "sdk-noheader", "azure-sdk")
# Profiles whose clients must never run out of retries (the real SDK: an application sees its
# get_token fail only then).
NO_EXHAUSTION_PROFILES: tuple[str, ...] = ("azure-sdk",)

DRAIN_RATIO_MAX = 1.20  # drain ≤ 1.20 · N/(C - λ₀)
AMPLIFICATION_MAX = 1.1  # attempts at the backend ÷ work owed
WASTED_MAX = 0.01  # wasted work strictly under 1 %
FRESH_SUCCESS_MIN = 0.995
P99_FACTOR_MAX = 2.0  # p99 after (during) ≤ 2 · before
ISOLATION_CHANGE_MAX = 0.05  # |other region's local goodput change| strictly under 5 %

MEASURED_W = 32  # widest measured text that sets render_checks' column
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection-error"


@dataclass(frozen=True)
class Check:
    """One figure of one run: what was measured, the target, and whether it was met."""

    figure: str
    measured: str
    target: str
    ok: bool


def is_explicit_answer(code: str) -> bool:
    """Whether an answer code ("503 overload") is one of Sluice's own from the reason table.

    `backend:` answers (the backend's own refusals passed through), `<status> -` (no reason),
    timeouts and connection errors are not; nor is a known reason with the wrong status.
    """
    status, _, reason = code.partition(" ")
    if not status.isdigit():
        return False
    try:
        allowed = REASONS.get(Reason(reason))
    except ValueError:  # not a reason of the table at all
        return False
    return allowed is not None and int(status) in allowed


def _pct(v: float, digits: int = 2) -> str:
    return f"{v * 100:.{digits}f}%"


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def _before_t0(result: Mapping[str, Any]) -> dict[str, int]:
    """Answers to attempts sent before t0 (all answers minus those sent from t0 on)."""
    total: Mapping[str, int] = result.get("answers") or {}
    after: Mapping[str, int] = result.get("answers_after_t0") or {}
    out = {code: n - after.get(code, 0) for code, n in total.items()}
    return {code: n for code, n in out.items() if n > 0}


def _with_before(measured: str, before: Mapping[str, int], codes: Sequence[str]) -> str:
    """Append the same kind of answers before t0 (shown, not counted) to a measured text."""
    shown = [(c, before[c]) for c in codes if before.get(c)]
    if not shown:
        return measured
    return measured + "; before t0, not counted: " + ", ".join(f"{c} \u00d7{n}" for c, n in shown)


def _zero_answers(result: Mapping[str, Any], code: str, figure: str) -> Check:
    after: Mapping[str, int] = result.get("answers_after_t0") or {}
    n = int(after.get(code, 0))
    return Check(
        figure=figure,
        measured=_with_before(str(n), _before_t0(result), (code,)),
        target="0",
        ok=n == 0,
    )


def _reason_table(result: Mapping[str, Any]) -> Check:
    after: Mapping[str, int] = result.get("answers_after_t0") or {}
    ignored = ("200", TIMEOUT, CONNECTION_ERROR)  # success; the two counted on their own
    bad = sorted(
        ((c, n) for c, n in after.items() if c not in ignored and n and not is_explicit_answer(c)),
        key=lambda cn: (-cn[1], cn[0]),
    )
    explicit = sum(n for c, n in after.items() if c not in ignored and is_explicit_answer(c))
    measured = (
        ", ".join(f"{c} \u00d7{n}" for c, n in bad) if bad else f"all explicit ({explicit} answers)"
    )
    before = _before_t0(result)
    before_bad = [c for c in before if c not in ignored and not is_explicit_answer(c)]
    return Check(
        figure="other non-200 from the §4 reason table",
        measured=_with_before(measured, before, sorted(before_bad)),
        target="reason table only",
        ok=not bad,
    )


def _p99_check(figure: str, before: float | None, after: float | None) -> Check:
    if before is None or after is None:
        return Check(
            figure=figure,
            measured=f"{'—' if after is None else _ms(after)} (before "
            f"{'—' if before is None else _ms(before)})",
            target=f"≤ {P99_FACTOR_MAX:g} \u00d7 before",
            ok=False,
        )
    return Check(
        figure=figure,
        measured=_ms(after),
        target=f"≤ {P99_FACTOR_MAX:g} \u00d7 {_ms(before)} = {_ms(P99_FACTOR_MAX * before)}",
        ok=after <= P99_FACTOR_MAX * before,
    )


def _success_check(figure: str, fresh: Mapping[str, Any]) -> Check:
    s = fresh.get("success")
    n = fresh.get("n", 0)
    return Check(
        figure=figure,
        measured="—" if s is None else f"{_pct(s)} ({fresh.get('ok', 0)}/{n})",
        target=f"≥ {_pct(FRESH_SUCCESS_MIN, 1)}",
        ok=s is not None and s >= FRESH_SUCCESS_MIN,
    )


def _drain_checks(result: Mapping[str, Any]) -> list[Check]:
    b: Mapping[str, Any] = result.get("backlog") or {}
    n = int(b.get("n") or 0)
    succeeded = int(b.get("succeeded") or 0)
    checks = [
        Check(
            figure="backlog succeeded",
            measured=f"{succeeded}/{n}" + ("" if n else " (no backlog to drain)"),
            target="all (N > 0)",
            ok=n > 0 and succeeded == n,
        )
    ]
    ratio = b.get("drain_ratio")
    bound = b.get("bound_s")
    target = f"≤ {DRAIN_RATIO_MAX:.2f}\u00d7 N/(C\u2212λ₀)" + (
        f" = {bound * DRAIN_RATIO_MAX:.2f} s" if bound else ""
    )
    if ratio is None:
        checks.append(Check("backlog drain", "not drained", target, ok=False))
    else:
        drain = b.get("drain_s")
        checks.append(
            Check(
                figure="backlog drain",
                measured=f"{ratio:.3f}\u00d7" + (f" ({drain:.2f} s)" if drain is not None else ""),
                target=target,
                ok=ratio <= DRAIN_RATIO_MAX,
            )
        )
    amp = result.get("amplification")
    checks.append(
        Check(
            figure="amplification",
            measured="—" if amp is None else f"{amp:.3f}",
            target=f"≤ {AMPLIFICATION_MAX:g}",
            ok=amp is not None and amp <= AMPLIFICATION_MAX,
        )
    )
    wasted = result.get("wasted_fraction")
    checks.append(
        Check(
            figure="wasted work",
            measured="—" if wasted is None else _pct(wasted),
            target=f"< {_pct(WASTED_MAX, 0)}",
            ok=wasted is not None and wasted < WASTED_MAX,
        )
    )
    return checks


def _exhausted_check(result: Mapping[str, Any]) -> Check:
    ex: Mapping[str, Any] = result.get("exhausted") or {}
    if not ex:
        return Check("clients out of retries", "not measured", "0", ok=False)
    backlog, fresh = int(ex.get("backlog") or 0), int(ex.get("fresh") or 0)
    return Check(
        figure="clients out of retries",
        measured=f"{backlog + fresh} (backlog {backlog}, fresh {fresh}; most attempts "
        f"{ex.get('max_attempts', '—')} of {int(ex.get('retries') or 0) + 1})",
        target="0",
        ok=backlog + fresh == 0,
    )


def _served_spread_check(lb: Mapping[str, Any]) -> Check:
    """A fleet's backends served alike while the backlog waited (per worker: members' workers
    differ by one when K does not divide the scenario's)."""
    members: Mapping[str, Mapping[str, Any]] = lb.get("members") or {}
    per = [m.get("served_per_worker") for m in members.values()]
    value = lb.get("served_spread")
    shown = ", ".join("—" if v is None else f"{v:.0f}" for v in per)
    return Check(
        figure="backends' served per worker, max/min - 1",
        measured=("—" if value is None else _pct(value, 1)) + f" ({shown})",
        target=f"≤ {_pct(SERVED_SPREAD_MAX, 0)}",
        ok=value is not None and value <= SERVED_SPREAD_MAX,
    )


def check_recovery(result: Mapping[str, Any]) -> list[Check]:
    """The recovery figures (issue 4) of a `sluice` arm's results dict."""
    checks: list[Check] = []
    if result.get("profile") in DRAIN_PROFILES:
        checks.extend(_drain_checks(result))
    if result.get("profile") in NO_EXHAUSTION_PROFILES:
        checks.append(_exhausted_check(result))
    params: Mapping[str, Any] = result.get("params") or {}
    backends: Mapping[str, Mapping[str, Any]] = result.get("backends") or {}
    regions = [r for r in params.get("regions", []) if r in backends]
    regions += [r for r in backends if r not in regions]
    for region in regions:
        be = backends[region]
        peak, workers = be.get("peak_queue"), be.get("workers")
        checks.append(
            Check(
                figure=f"peak queue behind workers ({region})",
                measured="—" if peak is None else str(peak),
                target=f"≤ {workers} (one round of workers)",
                ok=peak is not None and workers is not None and peak <= workers,
            )
        )
    if not regions:
        checks.append(Check("peak queue behind workers", "—", "a backend measured", ok=False))
    if result.get("lb"):
        checks.append(_served_spread_check(result["lb"]))
    home = params.get("home", "")
    suffix = f" ({home})" if home else ""
    fresh: Mapping[str, Any] = result.get("fresh") or {}
    before: Mapping[str, Any] = fresh.get("before") or {}
    after: Mapping[str, Any] = fresh.get("after") or {}
    checks.append(_success_check(f"fresh success after t0{suffix}", after))
    checks.append(
        _p99_check(f"fresh p99 after t0{suffix}", before.get("p99_ms"), after.get("p99_ms"))
    )
    checks.append(_zero_answers(result, TIMEOUT, "client timeouts"))
    checks.append(_zero_answers(result, CONNECTION_ERROR, "connection errors"))
    checks.append(_reason_table(result))
    from .fault_figures import fault_checks  # it builds on this module's Check

    return checks + fault_checks(result)


def check_isolation(result: Mapping[str, Any]) -> list[Check]:
    """The regional-isolation figures (issue 5) of `two-region`'s `sluice` arm, then the storm
    region's recovery figures."""
    other: Mapping[str, Any] | None = result.get("other_region")
    checks: list[Check] = []
    if not other:
        checks.append(Check("other region measured", "no other_region block", "present", False))
        return checks + check_recovery(result)
    region = other.get("region", "other")
    change = other.get("local_goodput_change")
    pre, during = other.get("local_goodput_before"), other.get("local_goodput_during")
    rates = f" ({pre:.1f} → {during:.1f} req/s)" if pre is not None and during is not None else ""
    checks.append(
        Check(
            figure=f"{region} local goodput change",
            measured=("—" if change is None else f"{change * 100:+.1f}%") + rates,
            target=f"|x| < {_pct(ISOLATION_CHANGE_MAX, 0)}",
            ok=change is not None and abs(change) < ISOLATION_CHANGE_MAX,
        )
    )
    fb: Mapping[str, Any] = other.get("fresh_before") or {}
    fd: Mapping[str, Any] = other.get("fresh_during") or {}
    checks.append(_success_check(f"{region} local success during", fd))
    checks.append(_p99_check(f"{region} local p99 during", fb.get("p99_ms"), fd.get("p99_ms")))
    return checks + check_recovery(result)


def checks_for(result: Mapping[str, Any]) -> list[Check]:
    """The figures an arm must reach: none unless it is the protected (`sluice`) arm; a
    protected arm that could not run fails."""
    if result.get("arm") != PROTECTED_ARM:
        return []
    if "unavailable" in result:
        reason = str(result["unavailable"]).strip().splitlines()
        return [Check("arm ran", "unavailable: " + (reason[0] if reason else "?"), "ran", False)]
    regions = (result.get("params") or {}).get("regions") or []
    if len(regions) > 1 or result.get("other_region"):
        return check_isolation(result)
    return check_recovery(result)


def run_label(result: Mapping[str, Any]) -> str:
    """Scenario, capacity scale, client profile and variant of a run, like `reopen` `x2` `sdk`
    (the scale is printed with a multiplication sign; `cold` follows for a cold start)."""
    parts = [str(result.get("scenario", "?"))]
    scale = result.get("capacity_scale")
    if isinstance(scale, int | float):
        parts.append(f"\u00d7{scale:g}")
    if result.get("profile"):
        parts.append(str(result["profile"]))
    if result.get("variant"):
        parts.append(str(result["variant"]))
    return " ".join(parts)


def render_checks(results: Sequence[Mapping[str, Any]]) -> str:
    """One block per protected run (PASS/FAIL, figure, measured, target), then
    `figures: N/M met`."""
    blocks = [(r, checks_for(r)) for r in results]
    blocks = [(r, cs) for r, cs in blocks if cs]
    every = [c for _, cs in blocks for c in cs]
    fig_w = max((len(c.figure) for c in every), default=0)
    # A long measured text (answers before t0) overflows its own line, not the whole column.
    val_w = max((len(c.measured) for c in every if len(c.measured) <= MEASURED_W), default=0)
    lines: list[str] = []
    invalid = 0
    for r, cs in blocks:
        header = run_label(r)
        validity = r.get("validity") or {}
        if validity and not validity.get("valid", True):
            invalid += 1
            header += " (INVALID run: " + "; ".join(validity.get("invalid_reasons", [])) + ")"
        met = sum(c.ok for c in cs)
        lines.append(f"{header}: {met}/{len(cs)} met")
        for c in cs:
            lines.append(
                f"  {'PASS' if c.ok else 'FAIL'}  {c.figure.ljust(fig_w)}  "
                f"{c.measured.ljust(val_w)}  {c.target}".rstrip()
            )
    summary = f"figures: {sum(c.ok for c in every)}/{len(every)} met"
    if blocks:
        clean = sum(1 for _, cs in blocks if all(c.ok for c in cs))
        summary += f" ({clean}/{len(blocks)} runs meet every figure"
        summary += f"; {invalid} run(s) INVALID)" if invalid else ")"
    else:
        summary += " (no protected arm ran)"
    lines.append(summary)
    return "\n".join(lines)


def all_met(results: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every protected run met every figure (and at least one had figures)."""
    checks = [c for r in results for c in checks_for(r)]
    return bool(checks) and all(c.ok for c in checks)
