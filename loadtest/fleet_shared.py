"""What sharing state on Redis did in a fleet run (issue 18), from its raw records (pure).

- `sidecar_fleet`: one sidecar's fleet block of /status at the end (peers, exchanges ok /
  failed, slots booked by a peer and redeemed here, what was sent and received) and the
  instants (from t0) its link went down and came back, from the /status samples;
- `fault_doc`: a Redis-fault run (`--redis-kill-at`): the kill, restart and first answer (from
  t0); the attempts sent while Redis was away (from the kill until AFTER_ACCEPTING s after it
  answered again, the link's reconnect included) against the other attempts sent from t0:
  answers, timeouts, connection errors, and the latency of the 200s; fresh workflows started in
  that window against the others (success, p99); each sidecar's `sluice_fleet_redis_up` as
  scraped (the gauge going 0, then back to 1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

AFTER_ACCEPTING = 2.0  # s after Redis answers again still counted as "around the fault"


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100.0 * len(ordered)))) - 1]


def link_changes(
    samples: Sequence[tuple[float, Mapping[str, Any]]], t0: float
) -> list[tuple[float, bool]]:
    """When (s from t0) a sidecar's link was seen to change state (/status `fleet.redis_up`),
    starting with its first state seen."""
    out: list[tuple[float, bool]] = []
    for t, doc in samples:
        fleet = doc.get("fleet")
        if not isinstance(fleet, Mapping) or "redis_up" not in fleet:
            continue
        up = bool(fleet["redis_up"])
        if not out or out[-1][1] != up:
            out.append((round(t - t0, 2), up))
    return out


def sidecar_fleet(
    samples: Sequence[tuple[float, Mapping[str, Any]]], final: Mapping[str, Any] | None, t0: float
) -> dict[str, Any] | None:
    """One sidecar's fleet figures (None when it ran standalone)."""
    fleet = (final or {}).get("fleet")
    if not isinstance(fleet, Mapping):
        return None
    slots = fleet.get("slots") or {}
    return {
        "peers": len(fleet.get("peers") or []),
        "exchanges": fleet.get("exchanges"),
        "slots_foreign": slots.get("foreign"),
        "redeemed_foreign": slots.get("redeemed_foreign"),
        "closed_by_peers": slots.get("closed_by_peers"),
        "sent": fleet.get("sent"),
        "received": fleet.get("received"),
        "unshared": fleet.get("unshared"),
        "link_changes": link_changes(samples, t0),
    }


def _attempts(atts: Sequence[Sequence[Any]], fresh_ids: set[int]) -> dict[str, Any]:
    answers = Counter(str(a[5]) for a in atts)
    lat = [(a[4] - a[3]) * 1000.0 for a in atts if a[5] == "200" and a[4] is not None]
    fresh_lat = [
        (a[4] - a[3]) * 1000.0
        for a in atts
        if a[5] == "200" and a[4] is not None and a[0] in fresh_ids
    ]
    return {
        "n": len(atts),
        "ok_share": answers.get("200", 0) / len(atts) if atts else None,
        "answers": dict(answers.most_common()),
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "fresh_p99_ms": _pct(fresh_lat, 99),
    }


def _fresh(wfs: Sequence[Sequence[Any]]) -> dict[str, Any]:
    ok = [w for w in wfs if w[6]]
    lat = [(w[5] - w[4]) * 1000.0 for w in ok]
    return {
        "n": len(wfs),
        "success": len(ok) / len(wfs) if wfs else None,
        "p99_ms": _pct(lat, 99),
    }


def fault_doc(
    events: Sequence[Sequence[Any]],
    workflows: Sequence[Sequence[Any]],
    attempts: Sequence[Sequence[Any]],
    gauges: Mapping[str, Sequence[Sequence[Any]]],
    t0: float,
    t_settle: float,
) -> dict[str, Any] | None:
    """A Redis-fault run's figures (None without a kill): see the module docstring.
    `workflows` / `attempts` are the fleet's records, `gauges` each sidecar's scraped
    (t, sluice_fleet_redis_up), `t_settle` the end of the fresh window."""
    at = {str(e[0]): float(e[1]) for e in events}
    if "kill" not in at:
        return None
    lo = at["kill"]
    hi = at.get("accepting", at.get("restart", lo)) + AFTER_ACCEPTING
    fresh_ids = {int(w[0]) for w in workflows if w[1] == 0}
    during = [a for a in attempts if lo <= a[3] < hi]
    rest = [a for a in attempts if a[3] >= t0 and not lo <= a[3] < hi]
    fresh = [w for w in workflows if w[1] == 0 and t0 <= w[4] < t_settle]
    return {
        "events_s": {k: round(v - t0, 2) for k, v in at.items()},
        "window_s": [round(lo - t0, 2), round(hi - t0, 2)],
        "attempts_during": _attempts(during, fresh_ids),
        "attempts_rest": _attempts(rest, fresh_ids),
        "fresh_during": _fresh([w for w in fresh if lo <= w[4] < hi]),
        "fresh_rest": _fresh([w for w in fresh if not lo <= w[4] < hi]),
        "redis_up_metric": {
            name: _gauge_changes(series, t0) for name, series in sorted(gauges.items())
        },
    }


def _gauge_changes(series: Sequence[Sequence[Any]], t0: float) -> list[tuple[float, float | None]]:
    """The scraped gauge's changes (s from t0, value), its first value included."""
    out: list[tuple[float, float | None]] = []
    for t, v in series:
        if not out or out[-1][1] != v:
            out.append((round(float(t) - t0, 2), v))
    return out


def shared_doc(
    redis: Mapping[str, Any] | None,
    workflows: Sequence[Sequence[Any]],
    attempts: Sequence[Sequence[Any]],
    t0: float,
    t_settle: float,
) -> dict[str, Any]:
    """The run's `fleet_redis` block: whether the fleet shared state, and its fault."""
    if redis is None:
        return {"shared": False}
    return {
        "shared": True,
        "fault": fault_doc(
            redis.get("events") or [],
            workflows,
            attempts,
            redis.get("redis_up_metric") or {},
            t0,
            t_settle,
        ),
    }
