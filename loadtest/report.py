"""The terminal table: one scenario, its arms side by side (pure formatting)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .lb_report import lb_rows, shared_rows


def fmt_num(v: float | None, digits: int = 1) -> str:
    """A number, or an em dash for None."""
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_pct(v: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, or an em dash."""
    return "—" if v is None else f"{v * 100:.{digits}f}%"


def fmt_ms(v: float | None) -> str:
    """Milliseconds, rounded sensibly."""
    if v is None:
        return "—"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _backlog_drain(b: dict[str, Any]) -> str:
    if not b.get("n"):
        return "—"
    if b.get("drain_s") is None:
        return "not drained"
    ratio = b.get("drain_ratio")
    return (
        f"{b['drain_s']:.1f} s ({ratio:.2f}\u00d7)"
        if ratio is not None
        else f"{b['drain_s']:.1f} s"
    )


def _answer_order(arms: Sequence[dict[str, Any]]) -> list[str]:
    totals: dict[str, int] = {}
    for r in arms:
        for code, n in r.get("answers", {}).items():
            totals[code] = totals.get(code, 0) + n
    for code in ("200", "timeout", "connection-error"):
        totals.setdefault(code, 0)
    head = ["200"]
    tail = ["timeout", "connection-error"]
    middle = sorted((c for c in totals if c not in head + tail), key=lambda c: (-totals[c], c))
    return head + middle + tail


def header_line(r: dict[str, Any]) -> str:
    """One line naming the scenario and its parameters."""
    p = r["params"]
    rates = p["fresh_rate"]
    lam = " + ".join(f"{v:g}" for v in rates.values())
    parts = [
        f"{r['scenario']}",
        f"seed {r['seed']}",
        f"capacity \u00d7{r['capacity_scale']:g}: C = {p['capacity']:g} req/s "
        f"({p['workers']} workers \u00d7 {p['service_time_s'] * 1000:g} ms, "
        f"thrash {p['thrash']:g}, queue {p['queue_limit']})",
        f"λ₀ = {lam} req/s",
        f"T = {p['timeout_s']:g} s",
        f"profile {r['profile']}",
    ]
    if p["trigger"] == "reopen":
        parts.append(f"N = {p['backlog']} released at t0")
    else:
        parts.append(f"outage {p['outage_s']:g} s, N = workflows open at the first good probe (t0)")
    if p.get("lb"):
        split = " + ".join(str(w) for w in p["member_workers"])
        parts.append(f"fleet of {p['fleet']} ({split} workers) behind HAProxy {p['lb']}")
    if len(p["regions"]) > 1:
        parts.append(f"regions {'/'.join(p['regions'])}, storm in {p['home']}")
        if p["failover"]:
            parts.append("clients fail over")
    return " · ".join(parts[:2]) + "\n" + " · ".join(parts[2:])


Cell = Callable[[dict[str, Any]], str]


class _Rows:
    """The table's rows: a label and one cell per arm ("unavailable" for an arm that did not
    run), in the order added."""

    def __init__(self, results: Sequence[dict[str, Any]]) -> None:
        self.results = results
        self.rows: list[tuple[str, list[str]]] = []

    def add(self, label: str, cell: Cell) -> None:
        """A row whose cell for each arm that ran is `cell(result)`."""
        cells = [("unavailable" if "unavailable" in r else cell(r)) for r in self.results]
        self.rows.append((label, cells))

    def heading(self, label: str) -> None:
        """A row with a label and no cells."""
        self.rows.append((label, ["" for _ in self.results]))


def _cell(fn: Callable[[dict[str, Any], str], str], key: str) -> Cell:
    """A cell of a row that is one of several alike (per region, per answer): `fn(r, key)`."""
    return lambda r: fn(r, key)


def render_table(results: Sequence[dict[str, Any]]) -> str:
    """The comparison table of one scenario's arms (unavailable arms get a note)."""
    ran = [r for r in results if "unavailable" not in r]
    if not ran:
        lines = ["no arm could run:"]
        for r in results:
            lines.append(f"  {r['arm']}: {r['unavailable'].splitlines()[0]}")
        return "\n".join(lines)
    first = ran[0]
    rows = _Rows(results)
    _goodput_rows(rows, first["params"])
    _backlog_rows(rows, first)
    _fresh_and_work_rows(rows, first["params"] | {"members": list(first["backends"])})
    if first.get("lb"):
        lb_rows(rows, first["lb"])
        shared_rows(rows, first)
    if first.get("other_region"):
        _other_region_rows(rows, first["other_region"]["region"])
    rows.heading("answers, every attempt:")
    for code in _answer_order(ran):
        rows.add(f"  {code}", _cell(lambda r, c: str(r.get("answers", {}).get(c, 0)), code))
    rows.add("generator loop lag p99 (ms)", lambda r: fmt_ms(r["validity"]["loop_lag_p99_ms"]))
    rows.add("valid", lambda r: "yes" if r["validity"]["valid"] else "NO")

    names = [r["arm"] for r in results]
    label_w = max(len(label) for label, _ in rows.rows)
    col_w = [
        max(len(names[i]), *(len(vals[i]) for _, vals in rows.rows)) for i in range(len(names))
    ]
    out = [header_line(first), ""]
    out.append(
        " " * label_w + "  " + "  ".join(n.rjust(w) for n, w in zip(names, col_w, strict=True))
    )
    for label, vals in rows.rows:
        cells = "  ".join(v.rjust(w) for v, w in zip(vals, col_w, strict=True))
        out.append(f"{label.ljust(label_w)}  {cells}")
    out.append("")
    out.extend(validity_lines(results))
    return "\n".join(out)


def _goodput_rows(rows: _Rows, p: dict[str, Any]) -> None:
    """Goodput in the last window, and per region with two."""
    rows.add(
        f"goodput, last {p['last_window_s']:g} s (req/s, % of λ₀)",
        lambda r: (
            f"{r['goodput_last_window']:.1f} ({fmt_pct(r['goodput_last_window_fraction'], 0)})"
        ),
    )
    if len(p["regions"]) > 1:
        for region in p["regions"]:
            rows.add(
                f"  served by {region}",
                _cell(lambda r, g: f"{r['goodput_last_window_by_region'][g]:.1f}", region),
            )


def _backlog_rows(rows: _Rows, first: dict[str, Any]) -> None:
    """The backlog: its size, successes, drain against the bound, release, what was left."""
    lw = first["params"]["last_window_s"]
    bound = first["backlog"].get("bound_s")
    rows.add("backlog N (workflows)", lambda r: str(r["backlog"]["n"]))
    rows.add(
        "backlog succeeded",
        lambda r: (
            f"{fmt_pct(r['backlog']['share'])} ({r['backlog']['succeeded']}/{r['backlog']['n']})"
            if r["backlog"]["n"]
            else "—"
        ),
    )
    rows.add(
        "backlog drain (\u00d7 N/(C\u2212λ₀))" + (f", bound {bound:.1f} s" if bound else ""),
        lambda r: _backlog_drain(r["backlog"]),
    )
    rows.add(
        "backlog released over (ms)",
        lambda r: fmt_ms(r["backlog"]["release_spread_ms"]) if r["backlog"]["n"] else "—",
    )
    rows.add(
        f"backlog open / its attempts, last {lw:g} s",
        lambda r: (
            f"{r['backlog']['open_at_last_window']} / {r['backlog']['attempts_in_last_window']}"
            if r["backlog"]["n"]
            else "—"
        ),
    )


def _fresh_and_work_rows(rows: _Rows, p: dict[str, Any]) -> None:
    """Fresh traffic after t0 and before; amplification, wasted work, the backends' queues."""
    rows.add(
        "fresh success after t0",
        lambda r: f"{fmt_pct(r['fresh']['after']['success'])} (n={r['fresh']['after']['n']})",
    )
    rows.add(
        "fresh p50 / p99 after t0 (ms)",
        lambda r: (
            f"{fmt_ms(r['fresh']['after']['p50_ms'])} / {fmt_ms(r['fresh']['after']['p99_ms'])}"
        ),
    )
    rows.add(
        "fresh p50 / p99 before (ms)",
        lambda r: (
            f"{fmt_ms(r['fresh']['before']['p50_ms'])} / {fmt_ms(r['fresh']['before']['p99_ms'])}"
        ),
    )
    rows.add("amplification (backend ÷ first tries)", lambda r: fmt_num(r["amplification"], 2))
    rows.add("wasted work (of completed)", lambda r: fmt_pct(r["wasted_fraction"]))
    for region in p.get("members") or p["regions"]:
        rows.add(
            f"peak queue behind workers ({region})",
            _cell(
                lambda r, g: (
                    f"{r['backends'][g]['peak_queue']} (workers {r['backends'][g]['workers']})"
                ),
                region,
            ),
        )


def _other_region_rows(rows: _Rows, o: str) -> None:
    """Two regions: the other region `o`, before the storm and during it."""

    def other(r: dict[str, Any]) -> dict[str, Any]:
        return r["other_region"]  # type: ignore[no-any-return]

    rows.add(
        f"{o} local goodput at backend, before → during",
        lambda r: (
            f"{other(r)['local_goodput_before']:.1f} → "
            f"{other(r)['local_goodput_during']:.1f} "
            f"({_signed_pct(other(r)['local_goodput_change'])})"
        ),
    )
    rows.add(
        f"{o} local success, before / during",
        lambda r: (
            f"{fmt_pct(other(r)['fresh_before']['success'], 2)} / "
            f"{fmt_pct(other(r)['fresh_during']['success'], 2)}"
        ),
    )
    rows.add(
        f"{o} local p99, before / during (ms)",
        lambda r: (
            f"{fmt_ms(other(r)['fresh_before']['p99_ms'])} / "
            f"{fmt_ms(other(r)['fresh_during']['p99_ms'])}"
        ),
    )
    rows.add(
        f"{o} backend: requests failed over to it (during)",
        lambda r: str(other(r)["foreign_arrivals_during"]),
    )


def _signed_pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:+.1f}%"


def validity_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per arm: validity, loop lag, CPU share of each process, notes."""
    lines = ["validity (CPU as share of one core over the measured span; the machine has 2):"]
    for r in results:
        if "unavailable" in r:
            first_line = r["unavailable"].strip().splitlines()[0] if r["unavailable"] else ""
            lines.append(f"  {r['arm']}: unavailable ({first_line})")
            continue
        v = r["validity"]
        verdict = "valid" if v["valid"] else "INVALID: " + "; ".join(v["invalid_reasons"])
        cpu = ", ".join(f"{k} {s:.0%}" for k, s in sorted(v["cpu_share"].items()))
        machine = v.get("machine_busy_cores")
        lag = (
            f"lag p50/p99/max {fmt_ms(v['loop_lag_p50_ms'])}/{fmt_ms(v['loop_lag_p99_ms'])}/"
            f"{fmt_ms(v['loop_lag_max_ms'])} ms"
        )
        text = f"  {r['arm']}: {verdict}; {lag}; CPU {cpu}"
        if machine is not None:
            text += f"; machine busy {machine:.2f} cores"
        text += f"; wall {r['wall_s']:.0f} s"
        lines.append(text)
        lines.extend(f"    note: {n}" for n in r.get("notes", []))
    return lines
