"""A fleet arm's own figures (issue 18: K backends, K sidecars, a balancer), from its raw
records (pure, no I/O).

- per backend (a member): its workers, what it served while a backlog waited (from t0 until
  all but WAITING_SHARE of the backlog has finished, or the end), served per worker, its peak
  queue behind its workers; the fleet's spread: max/min - 1 of served per worker (members'
  workers differ by one when K does not divide the scenario's; HAProxy weighs them so);
- per sidecar: time in each mode from t0, its median limit and pace, what its /status said of
  return slots (booked, redeemed: a solicited return recognised where it was booked), and its
  /metrics counters: refusals by reason, unsolicited retries by decision, retries recognised
  by signal (`sidecar_counters`);
- the fleet's returns: slots booked and redeemed over every sidecar. Each sidecar books the
  returns it asks for and recognises only those; through a balancer a return lands on another
  sidecar K - 1 times in K (round robin), where it is an unsolicited retry.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .fleet_shared import sidecar_fleet

WAITING_SHARE = 0.1  # "while a backlog waits": until all but this share of it has finished
SERVED_SPREAD_MAX = 0.10  # issue 18: the backends' served counts within 10 % of each other


def sidecar_counters(text: str) -> dict[str, Any]:
    """The counters of a sidecar's /metrics text the fleet's figures read."""
    out: dict[str, Any] = {
        "requests": defaultdict(float),  # outcome (refused: "refused <reason>") → count
        "retries": defaultdict(float),  # unsolicited retries by decision (callers summed)
        "recognised": defaultdict(float),  # retries recognised by signal
        "to_mode": defaultdict(float),  # mode transitions by the mode entered
        "slots_booked": 0.0,
        "slots_redeemed": 0.0,
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "sluice_requests_total":
                outcome = labels.get("outcome", "")
                reason = labels.get("reason", "")
                out["requests"][f"{outcome} {reason}".strip()] += value
            elif name == "sluice_retries_total":
                out["retries"][labels.get("decision", "")] += value
            elif name == "sluice_retries_recognised_total":
                out["recognised"][labels.get("signal", "")] += value
            elif name == "sluice_mode_transitions_total":
                out["to_mode"][labels.get("to_mode", "")] += value
            elif name == "sluice_retry_slots_booked_total":
                out["slots_booked"] += value
            elif name == "sluice_retry_slots_redeemed_total":
                out["slots_redeemed"] += value
    return {k: dict(v) if isinstance(v, defaultdict) else v for k, v in out.items()}


def waiting_until(backlog: Sequence[Sequence[Any]], t0: float, t_end: float) -> float:
    """When all but WAITING_SHARE of the backlog had finished (its workflows' ends), or
    `t_end` if that never happened within the run."""
    n = len(backlog)
    ends: list[float] = sorted(float(w[5]) for w in backlog if w[5] is not None)
    need = n - int(n * WAITING_SHARE)
    if n == 0 or len(ends) < need or need <= 0:
        return t_end if n else t0
    return min(t_end, max(t0, ends[need - 1]))


def member_figures(st: Mapping[str, Any], ok_ids: set[str], lo: float, hi: float) -> dict[str, Any]:
    """One member's backend over the backlog's wait [lo, hi): completions (served), those a
    client received (useful), per worker, and its exact peak queue against its workers."""
    workers = int(st["config"]["workers"])
    comps = [c for c in st["completions"] if lo <= c[0] < hi]
    served = len(comps)
    return {
        "workers": workers,
        "served": served,
        "useful": sum(1 for c in comps if c[1] in ok_ids),
        "served_per_worker": served / workers if workers else None,
        "peak_queue": st["peak_queue"],
        "peak_queue_over_workers": st["peak_queue"] / workers if workers else None,
    }


def spread(values: Sequence[float | None]) -> float | None:
    """max/min - 1 of `values` (None when any is missing or the smallest is 0)."""
    if not values or any(v is None for v in values):
        return None
    vs = [float(v) for v in values if v is not None]
    lo = min(vs)
    return max(vs) / lo - 1.0 if lo > 0 else None


def _median(values: Sequence[float | None]) -> float | None:
    vs = [v for v in values if isinstance(v, int | float)]
    return float(statistics.median(vs)) if vs else None


def mode_seconds(samples: Sequence[tuple[float, Mapping[str, Any]]], lo: float) -> dict[str, float]:
    """Seconds a sidecar spent in each mode from `lo`, from its /status samples (each sample's
    mode held until the next)."""
    out: dict[str, float] = defaultdict(float)
    pts = [(t, doc.get("mode")) for t, doc in samples if t >= lo]
    for (t, mode), (t_next, _) in itertools.pairwise(pts):
        out[str(mode)] += t_next - t
    return {k: round(v, 2) for k, v in out.items()}


def sidecar_figures(
    samples: Sequence[tuple[float, Mapping[str, Any]]],
    final: Mapping[str, Any] | None,
    counters: Mapping[str, Any] | None,
    t0: float,
) -> dict[str, Any]:
    """One sidecar from t0: its modes, median limit and pace (its drain's pace in RECOVERY),
    its return slots and its counters."""
    after = [doc for t, doc in samples if t >= t0]
    drains = [doc["drain"] for doc in after if isinstance(doc.get("drain"), dict)]
    slots = (final or {}).get("slots") or {}
    return {
        "modes_s": mode_seconds(samples, t0),
        "limit_median": _median([doc.get("limit") for doc in after]),
        "pace_median": _median([doc.get("pace_rps") for doc in after]),
        "drain_pace_median": _median([d.get("pace_rps") for d in drains]),
        "drain_backlog_max": max((d.get("backlog") or 0 for d in drains), default=None),
        "slots_booked": slots.get("total_booked"),
        "slots_redeemed": slots.get("redeemed"),
        "slots_expired": slots.get("expired"),
        "counters": dict(counters or {}),
        "fleet": sidecar_fleet(samples, final, t0),
    }


def returns_doc(sidecars: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The fleet's return slots (booked, redeemed, redeemed share) and its unsolicited
    retries by decision, summed over its sidecars."""
    booked = sum(int(s.get("slots_booked") or 0) for s in sidecars.values())
    redeemed = sum(int(s.get("slots_redeemed") or 0) for s in sidecars.values())
    # Of those, returns whose slot another sidecar booked (shared state only; in `redeemed`).
    foreign = sum(
        int((s.get("fleet") or {}).get("redeemed_foreign") or 0) for s in sidecars.values()
    )
    retries: dict[str, float] = defaultdict(float)
    for s in sidecars.values():
        for decision, n in ((s.get("counters") or {}).get("retries") or {}).items():
            retries[decision] += n
    return {
        "booked": booked,
        "redeemed": redeemed,
        "redeemed_share": redeemed / booked if booked else None,
        "redeemed_foreign": foreign,
        "unsolicited_retries": dict(retries),
    }


def lb_doc(
    k: int,
    lb: str,
    backends: Mapping[str, Mapping[str, Any]],
    proxies: Mapping[str, Any],
    backlog: Sequence[Sequence[Any]],
    ok_ids: set[str],
    window: tuple[float, float],
) -> dict[str, Any]:
    """A fleet arm's figures: `backends` its members' stats, `proxies` its sidecars'
    {"samples", "final", "counters"} by member name (empty in `direct`), `window` (t0, end)."""
    t0, t_end = window
    hi = waiting_until(backlog, t0, t_end)
    members = {name: member_figures(st, ok_ids, t0, hi) for name, st in backends.items()}
    sidecars = {
        name: sidecar_figures(p.get("samples") or [], p.get("final"), p.get("counters"), t0)
        for name, p in proxies.items()
    }
    return {
        "k": k,
        "lb": lb,
        "waiting_s": [0.0, round(hi - t0, 3)],
        "members": members,
        "served_spread": spread([m["served_per_worker"] for m in members.values()]),
        "queue_over_workers_max": max(
            (m["peak_queue_over_workers"] or 0.0 for m in members.values()), default=None
        ),
        "sidecars": sidecars,
        "returns": returns_doc(sidecars),
    }


def merged_samples(
    stats: Sequence[Mapping[str, Any]], lo: float, hi: float, width: float
) -> list[tuple[float, int, int]]:
    """The members' (t, busy, queued) samples as one backend's, for the timeline: per bin of
    `width` from `lo`, the sum over members of each one's largest busy and queue in it."""
    n = max(0, int((hi - lo) // width) + 1)
    busy, queued = [0] * n, [0] * n
    for st in stats:
        b, q = [0] * n, [0] * n
        for t, bs, qs in st.get("samples", []):
            i = int((t - lo) // width)
            if 0 <= i < n:
                b[i], q[i] = max(b[i], bs), max(q[i], qs)
        busy = [x + y for x, y in zip(busy, b, strict=True)]
        queued = [x + y for x, y in zip(queued, q, strict=True)]
    return [(lo + (i + 0.5) * width, busy[i], queued[i]) for i in range(n)]


def region_stats(
    backends: Mapping[str, Mapping[str, Any]], names: Sequence[str], lo: float, hi: float,
    width: float,
) -> dict[str, Any]:  # fmt: skip
    """A region's backend stats for the timeline: its one backend's, or its members' merged
    (completions together, samples summed per bin, workers summed)."""
    if len(names) == 1:
        return dict(backends.get(names[0], {}))
    stats = [backends[n] for n in names if n in backends]
    comps = sorted((c for st in stats for c in st.get("completions", [])), key=lambda c: c[0])
    return {
        "completions": comps,
        "samples": merged_samples(stats, lo, hi, width),
        "config": {"workers": sum(int(st["config"]["workers"]) for st in stats)},
    }
