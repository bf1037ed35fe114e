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
