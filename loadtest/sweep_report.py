"""The storm sweep's text: a table with one row per run, and the distribution of each figure."""

from __future__ import annotations

from collections.abc import Sequence

from .analysis import percentile
from .sweep_draw import POLITE
from .sweep_judge import ETA_READ_AT, ETA_TOLERANCE, RunOutcome, max_void

_COLUMNS = (
    "seed", "kind", "W", "st ms", "C", "thr", "N", "λ₀", "warm", "cl", "delay", "T",
    "step", "drain/bd", "eta/dl", "gp min", "fresh", "p99 ms", "q/W", "TO", "CE", "gen%", "slc%",
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
        _f(f.get("eta_of_drain_left"), ".2f") if d.kind in POLITE else "—",
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
        "(polite kinds), eta/dl the drain ETA /status showed 2 s after the release ÷ the "
        "drain then left, gp min lowest 1 s backlog goodput ÷ (C - λ₀), fresh success and p99 "
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
        ("eta_of_drain_left", f"ETA at +{ETA_READ_AT:g} s ÷ drain left"),
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
    lines.append(_eta_line(valid))
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


def _eta_line(valid: Sequence[RunOutcome]) -> str:
    """How often the drain ETA shown after the release was near the drain then left (issue
    19: within 25 % in 90 % of the polite runs). Reported, not judged."""
    polite = [o for o in valid if o.draw.kind in POLITE]
    steady = [o for o in polite if o.draw.step == "none"]
    return (
        f"drain ETA at +{ETA_READ_AT:g} s within {ETA_TOLERANCE:.0%} of the drain left: "
        f"{_eta_count(polite)} valid polite runs; {_eta_count(steady)} of those without a "
        "capacity step (an estimate made at +2 s knows only the capacity it has seen)"
    )


def _eta_count(runs: Sequence[RunOutcome]) -> str:
    """'near/all (k with no ETA shown)' for the runs' ETA ÷ drain-left ratios."""
    ratios = [o.figures.get("eta_of_drain_left") for o in runs]
    near = sum(1 for r in ratios if r is not None and abs(r - 1.0) <= ETA_TOLERANCE)
    shown = sum(1 for r in ratios if r is not None)
    return f"{near}/{len(runs)} ({len(runs) - shown} with no ETA shown)"
