"""A fleet arm's rows in the terminal table (pure formatting of loadtest.lb_analysis's block):
each backend's share of the work while the backlog waited and its peak queue, each sidecar's
modes, limit, pace and return slots, and the fleet's returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

Cell = Callable[[dict[str, Any]], str]


class Rows(Protocol):
    """The table's rows (loadtest.report)."""

    def add(self, label: str, cell: Cell) -> None:
        """A row whose cell for each arm is `cell(result)`."""


def _num(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _member(name: str, fn: Callable[[Mapping[str, Any]], str]) -> Cell:
    def cell(r: dict[str, Any]) -> str:
        m = ((r.get("lb") or {}).get("members") or {}).get(name)
        return "—" if m is None else fn(m)

    return cell


def _sidecar(name: str, fn: Callable[[Mapping[str, Any]], str]) -> Cell:
    def cell(r: dict[str, Any]) -> str:
        s = ((r.get("lb") or {}).get("sidecars") or {}).get(name)
        return "—" if s is None else fn(s)

    return cell


def modes_text(modes: Mapping[str, float]) -> str:
    """`NORMAL 3.1 s, RECOVERY 12.0 s`: the modes a sidecar spent time in, longest first."""
    parts = sorted(modes.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{m} {s:.1f}" for m, s in parts if s >= 0.05) or "—"


def slots_text(s: Mapping[str, Any]) -> str:
    """`412 / 980`: return slots redeemed / booked."""
    return f"{_num(s.get('slots_redeemed'))} / {_num(s.get('slots_booked'))}"


def _spread(r: dict[str, Any]) -> str:
    lb = r.get("lb") or {}
    v = lb.get("served_spread")
    until = (lb.get("waiting_s") or [0.0, 0.0])[1]
    return ("—" if v is None else f"{v * 100:.1f}%") + f" (t0 to +{until:.1f} s)"


def _returns(r: dict[str, Any]) -> str:
    ret = (r.get("lb") or {}).get("returns") or {}
    share = ret.get("redeemed_share")
    tail = "" if share is None else f" ({share * 100:.0f}%)"
    return f"{ret.get('redeemed', 0)} / {ret.get('booked', 0)}{tail}"


def _unsolicited(r: dict[str, Any]) -> str:
    ret = (r.get("lb") or {}).get("returns") or {}
    by = ret.get("unsolicited_retries") or {}
    return ", ".join(f"{d} {n:.0f}" for d, n in sorted(by.items())) or "—"


def lb_rows(rows: Rows, lb: Mapping[str, Any]) -> None:
    """The fleet's rows (member names from `lb`, the first arm's block)."""
    rows.add("fleet: served per worker spread, backlog waiting", _spread)
    for name in lb.get("members") or {}:
        rows.add(
            f"  {name}: served (per worker)",
            _member(name, lambda m: f"{m['served']} ({_num(m['served_per_worker'])})"),
        )
    for name in lb.get("members") or {}:
        rows.add(f"  sidecar {name}: modes from t0 (s)", _sidecar(name, lambda s: modes_text(
            s.get("modes_s") or {})))  # fmt: skip
        rows.add(
            f"  sidecar {name}: limit / pace (median)",
            _sidecar(name, lambda s: f"{_num(s['limit_median'])} / {_num(s['pace_median'])}"),
        )
        rows.add(f"  sidecar {name}: slots redeemed / booked", _sidecar(name, slots_text))
    rows.add("fleet: return slots redeemed / booked", _returns)
    rows.add("fleet: unsolicited retries by decision", _unsolicited)


def _fleet_of(name: str, fn: Callable[[Mapping[str, Any]], str]) -> Cell:
    return _sidecar(name, lambda s: "—" if not s.get("fleet") else fn(s["fleet"]))


def _shared(r: dict[str, Any]) -> str:
    return "Redis" if (r.get("fleet_redis") or {}).get("shared") else "none (each sidecar alone)"


def _fault(key: str, fn: Callable[[Mapping[str, Any]], str]) -> Cell:
    def cell(r: dict[str, Any]) -> str:
        fault = (r.get("fleet_redis") or {}).get("fault") or {}
        return "—" if key not in fault else fn(fault[key])

    return cell


def _attempts_text(a: Mapping[str, Any]) -> str:
    ans = a.get("answers") or {}
    n = int(a.get("n") or 0)
    bad = ", ".join(f"{c} {k}" for c, k in ans.items() if c != "200") or "none"
    p50, p99 = _num(a.get("p50_ms")), _num(a.get("p99_ms"))
    return f"{n}, 200 {ans.get('200', 0)}; p50/p99 {p50}/{p99} ms; non-200: {bad}"


def _changes(changes: Any) -> str:
    return ", ".join(
        f"{('up' if v else 'down') if isinstance(v, bool) else _num(v)} at {t:+.1f}"
        for t, v in changes
    )


def shared_rows(rows: Rows, first: Mapping[str, Any]) -> None:
    """Whether the fleet shared state on Redis; each sidecar's link (peers, exchanges, the
    slots of its peers it knew and redeemed); a Redis fault's windows and gauges."""
    rows.add("fleet: shared state", _shared)
    shared = first.get("fleet_redis") or {}
    if not shared.get("shared"):
        return
    for name in (first.get("lb") or {}).get("members") or {}:
        rows.add(
            f"  sidecar {name}: peers, exchanges ok/failed",
            _fleet_of(name, lambda f: f"{f['peers']}, {(f.get('exchanges') or {}).get('ok')}"
                      f"/{(f.get('exchanges') or {}).get('failed')}"),
        )  # fmt: skip
        rows.add(
            f"  sidecar {name}: peers' slots known / redeemed here",
            _fleet_of(name, lambda f: f"{_num(f.get('slots_foreign'))} / "
                      f"{_num(f.get('redeemed_foreign'))}"),
        )  # fmt: skip
        rows.add(f"  sidecar {name}: link up/down (s from t0)",
                 _fleet_of(name, lambda f: _changes(f.get("link_changes") or [])))  # fmt: skip
    if not shared.get("fault"):
        return
    rows.add("Redis fault: events (s from t0)", _fault("events_s", lambda e: ", ".join(
        f"{k} {v:+.2f}" for k, v in e.items())))  # fmt: skip
    rows.add("  attempts sent around it", _fault("attempts_during", _attempts_text))
    rows.add("  attempts sent from t0, the rest", _fault("attempts_rest", _attempts_text))
    for key, label in (("fresh_during", "around it"), ("fresh_rest", "the rest")):
        rows.add(f"  fresh workflows started {label}: n, success, p99", _fault(key, _fresh_text))
    for name in shared["fault"].get("redis_up_metric") or {}:
        rows.add(f"  sidecar {name}: sluice_fleet_redis_up (s from t0)", _gauge(name))


def _fresh_text(f: Mapping[str, Any]) -> str:
    ok = f.get("success")
    return f"{f['n']}, {'—' if ok is None else f'{ok * 100:.1f}%'}, {_num(f['p99_ms'])} ms"


def _gauge(name: str) -> Cell:
    return _fault("redis_up_metric", lambda g: _changes(g.get(name) or []))
