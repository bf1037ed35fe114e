"""The fleet table's rows (pure): one run's results (loadtest.analysis, with its fleet block
from loadtest.lb_analysis) to the figures issue 18 asks for, and the rows to text.

A run is VOID when it measured the machine rather than the system: the generator's loop lag
or dropped arrivals (analysis's validity, the sweep's `void_reasons`), or a release that was
not N prepared writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .figures import CONNECTION_ERROR, TIMEOUT, checks_for, is_explicit_answer
from .sweep_judge import void_reasons

COLUMNS: tuple[tuple[str, str], ...] = (
    ("K", "k"),
    ("lb", "lb"),
    ("scenario", "scenario"),
    ("profile", "profile"),
    ("arm", "arm"),
    ("state", "state"),
    ("backlog ok", "backlog"),
    ("drain \u00d7", "drain"),
    ("fresh ok", "fresh"),
    ("p99 ms before→after", "p99"),
    ("t/o", "timeouts"),
    ("conn", "conn_errors"),
    ("non-expl", "non_explicit"),
    ("served spread", "spread"),
    ("worst q/w", "queue"),
    ("returns redeemed/booked", "returns"),
    ("unsol. retries adm/ref", "unsolicited"),
    ("figures", "figures"),
    ("CPU run/machine", "cpu"),
    ("lag p99/max ms", "lag"),
    ("verdict", "verdict"),
)


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v * 100:.{digits}f}%"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def _worst_queue(members: Mapping[str, Mapping[str, Any]], backends: Mapping[str, Any]) -> str:
    """The member (or backend) whose peak queue was largest against its workers: `q/w`."""
    pool = members or backends
    if not pool:
        return "—"
    worst = max(pool.values(), key=lambda m: m["peak_queue"] / max(1, int(m["workers"])))
    return f"{worst['peak_queue']}/{worst['workers']}"


def _returns(lb: Mapping[str, Any]) -> str:
    ret = lb.get("returns") or {}
    if not lb.get("sidecars"):
        return "—"
    share = _pct(ret.get("redeemed_share"), 0)
    foreign = f", {ret['redeemed_foreign']} foreign" if ret.get("redeemed_foreign") else ""
    return f"{ret.get('redeemed', 0)}/{ret.get('booked', 0)} ({share}{foreign})"


def _unsolicited(lb: Mapping[str, Any]) -> str:
    by = (lb.get("returns") or {}).get("unsolicited_retries") or {}
    if not lb.get("sidecars"):
        return "—"
    return f"{by.get('admitted', 0):.0f}/{by.get('refused', 0):.0f}"


def _cpu(validity: Mapping[str, Any]) -> str:
    shares: Mapping[str, float] = validity.get("cpu_share") or {}
    own = sum(v for k, v in shares.items() if k != "harness")
    machine = validity.get("machine_busy_cores")
    return f"{own:.2f}/{'—' if machine is None else f'{machine:.2f}'}"


def _lag(validity: Mapping[str, Any]) -> str:
    """The generator's loop lag p99 / max (ms): what VOID is judged on."""
    p99, top = validity.get("loop_lag_p99_ms"), validity.get("loop_lag_max_ms")
    return f"{_ms(p99)}/{_ms(top)}"


def _void(r: Mapping[str, Any]) -> list[str]:
    """Why a run is VOID: analysis's invalid reasons, and the sweep's void reasons (its
    release check only where there is a release: an outage's backlog is never prepared)."""
    v: Mapping[str, Any] = r.get("validity") or {}
    reasons = list(v.get("invalid_reasons") or [])
    if (r.get("params") or {}).get("trigger") != "reopen":
        r = {**r, "backlog": {}}
    return reasons + [x for x in void_reasons(r) if x not in reasons]


def row_of(r: Mapping[str, Any], k: int, lb: str) -> dict[str, Any]:
    """One run's row: its labels, the figures as text, its verdict and why."""
    row: dict[str, Any] = {
        "k": str(k),
        "lb": lb,
        "scenario": str(r.get("scenario")),
        "profile": str(r.get("profile")),
        "arm": str(r.get("arm")),
        "state": "redis" if (r.get("fleet_redis") or {}).get("shared") else "local",
    }
    if "unavailable" in r:
        lines = str(r["unavailable"]).strip().splitlines()
        return row | {"verdict": "unavailable", "why": lines[0] if lines else ""}
    b, fresh = r["backlog"], r["fresh"]
    answers: Mapping[str, int] = r.get("answers_after_t0") or {}
    lbd: Mapping[str, Any] = r.get("lb") or {}
    checks = checks_for(r)
    void = _void(r)
    ratio = b.get("drain_ratio")
    return row | {
        "backlog": f"{b['succeeded']}/{b['n']}",
        "drain": "—" if ratio is None else f"{ratio:.2f}",
        "fresh": _pct(fresh["after"]["success"]),
        "p99": f"{_ms(fresh['before']['p99_ms'])}→{_ms(fresh['after']['p99_ms'])}",
        "timeouts": str(answers.get(TIMEOUT, 0)),
        "conn_errors": str(answers.get(CONNECTION_ERROR, 0)),
        "non_explicit": str(
            sum(
                n
                for c, n in answers.items()
                if c not in ("200", TIMEOUT, CONNECTION_ERROR) and not is_explicit_answer(c)
            )
        ),
        "spread": _pct(lbd.get("served_spread")),
        "queue": _worst_queue(lbd.get("members") or {}, r.get("backends") or {}),
        "returns": _returns(lbd),
        "unsolicited": _unsolicited(lbd),
        "figures": f"{sum(c.ok for c in checks)}/{len(checks)}" if checks else "—",
        "cpu": _cpu(r.get("validity") or {}),
        "lag": _lag(r.get("validity") or {}),
        "verdict": "VOID" if void else "valid",
        "why": "; ".join(void),
        "cpu_share": (r.get("validity") or {}).get("cpu_share") or {},
        "failed": [f"{c.figure}: {c.measured}" for c in checks if not c.ok],
    }


def render_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table: a header, one line per row, then what made a run VOID or unavailable."""
    cells = [[str(row.get(key, "")) for _, key in COLUMNS] for row in rows]
    widths = [
        max(len(head), *(len(c[i]) for c in cells)) if cells else len(head)
        for i, (head, _) in enumerate(COLUMNS)
    ]
    out = ["  ".join(h.ljust(w) for (h, _), w in zip(COLUMNS, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in cells]  # fmt: skip
    notes = [
        f"  {row['k']} {row['lb']} {row['scenario']} {row['profile']} {row['arm']}: "
        f"{row['verdict']}: {row['why']}"
        for row in rows
        if row.get("why")
    ]
    return "\n".join(out + (["", "VOID / unavailable runs:", *notes] if notes else []))
