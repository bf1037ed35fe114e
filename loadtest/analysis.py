"""From raw records to the figures of one arm: `analyze` (pure functions, no I/O).

The records are described in `run_data.py`; the backends' work, the run's validity and the
timeline are their own modules (`backend_work.py`, `validity.py`, `timeline.py`).

Windows: *before* is [start + 1 s, trigger - T); *after* is [t0, end - settle) for fresh
workflows (settle lets late starters finish), [t0, end] for rates; the *last window* is the final
`last_window` seconds before the end. Percentiles are nearest-rank.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from .backend_work import backend_work
from .fleet_shared import shared_doc
from .lb_analysis import lb_doc
from .profiles import make_profile
from .run_data import RunData, request_id
from .scenario import Scenario
from .stats import count_in, rate_in
from .stats import percentile as percentile  # sweep_report imports it from here
from .timeline import backlog_series, timeline
from .validity import run_validity

SETTLE = 2.0  # fresh workflows starting this close to the end are left out of ratios


def _fresh(wfs: Sequence[Sequence[Any]], region_idx: int, lo: float, hi: float) -> dict[str, Any]:
    sel = [w for w in wfs if w[1] == 0 and w[2] == region_idx and lo <= w[4] < hi]
    ok = [w for w in sel if w[6]]
    lat = [(w[5] - w[4]) * 1000.0 for w in ok]
    return {
        "n": len(sel),
        "ok": len(ok),
        "unfinished": sum(1 for w in sel if w[5] is None),
        "success": len(ok) / len(sel) if sel else None,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
    }


def analyze(run: RunData) -> dict[str, Any]:
    """The figures of one arm (a JSON-able dict) from its raw records."""
    sc = run.scenario
    regions = sc.regions
    home_idx = regions.index(sc.home)
    lam_total = sum(sc.fresh_rate(r) for r in regions)
    wfs: list[list[Any]] = run.fleet["workflows"]
    atts: list[list[Any]] = run.fleet["attempts"]
    t_end = run.t_end
    t0 = run.t0 if run.t0 is not None else run.t_trigger
    notes = list(run.notes)
    if run.t0 is None:
        notes.append("t0 not observed; the trigger instant is used instead")
    backlog = _backlog(sc, wfs, home_idx, t0)
    # Fresh traffic of the storm's region, before the trigger and after t0.
    before = (run.t_start + 1.0, run.t_trigger - sc.clients.timeout)
    after = (t0, t_end - SETTLE)
    ok_ids = {request_id(a[0], a[1]) for a in atts if a[5] == "200"}
    lw = sc.timing.last_window
    goodput_last = rate_in((a[4] for a in atts if a[5] == "200"), t_end - lw, t_end)
    work = backend_work(run, atts, backlog, ok_ids, t0)
    validity = run_validity(run, notes)
    return {
        "scenario": sc.name,
        "arm": run.arm,
        "seed": run.seed,
        "capacity_scale": run.capacity_scale,
        "profile": sc.clients.profile,
        "params": _params(run),
        "times": _times(run, t0),
        "goodput_last_window": goodput_last,
        "goodput_last_window_fraction": goodput_last / lam_total if lam_total else None,
        "goodput_last_window_by_region": {
            r: rate_in((a[4] for a in atts if a[5] == "200" and a[2] == i), t_end - lw, t_end)
            for i, r in enumerate(regions)
        },
        "backlog": _backlog_doc(run, backlog, t0),
        "exhausted": _exhausted(sc, wfs),
        "fresh": {
            "before": _fresh(wfs, home_idx, *before),
            "after": _fresh(wfs, home_idx, *after),
        },
        "amplification": work.amplification,
        "first_tries_after_t0": work.first_tries,
        "backend_arrivals_after_t0": work.arrivals,
        "wasted_fraction": work.wasted_fraction,
        "backends": work.backends,
        "answers": dict(Counter(a[5] for a in atts).most_common()),
        "answers_after_t0": dict(Counter(a[5] for a in atts if a[3] >= t0).most_common()),
        "other_region": _other_region(run, ok_ids, before, after, t0),
        "lb": _lb(run, backlog, ok_ids, t0),
        "fleet_redis": shared_doc(run.redis, wfs, atts, t0, t_end - SETTLE) if run.lb else None,
        "validity": validity,
        "notes": notes,
        "wall_s": run.wall_s,
        "timeline": timeline(run, t0),
    }


def _lb(
    run: RunData, backlog: Sequence[Sequence[Any]], ok_ids: set[str], t0: float
) -> dict[str, Any] | None:
    """A fleet arm's own figures (loadtest.lb_analysis); None without a balancer."""
    if run.lb is None:
        return None
    names = run.members.get(run.scenario.home, [])
    proxies = {
        n: {
            "samples": run.proxy_samples.get(n, []),
            "final": run.proxy_final.get(n),
            "counters": run.proxy_metrics.get(n),
        }
        for n in names
        if n in run.proxy_samples
    }
    members = {n: run.backends[n] for n in names}
    return lb_doc(len(names), run.lb, members, proxies, backlog, ok_ids, (t0, run.t_end))


def _params(run: RunData) -> dict[str, Any]:
    """The scenario's parameters as run (capacity after any scaling; ΣC of a fleet, whose
    members share the workers, each member's in `member_workers`)."""
    sc = run.scenario
    names = run.members.get(sc.home, [])
    return {
        "fleet": len(names) if run.lb is not None else 1,
        "lb": run.lb,
        "member_workers": [run.backends[n]["config"]["workers"] for n in names],
        "capacity": sc.backend.capacity,
        "workers": sc.backend.workers,
        "service_time_s": sc.backend.service_time,
        "thrash": sc.backend.thrash,
        "queue_limit": sc.backend.queue_limit,
        "fresh_rate": {r: sc.fresh_rate(r) for r in sc.regions},
        "fresh_rate_total": sum(sc.fresh_rate(r) for r in sc.regions),
        "timeout_s": sc.clients.timeout,
        "backlog": sc.traffic.backlog,
        "regions": sc.regions,
        "home": sc.home,
        "failover": sc.clients.failover,
        "trigger": sc.trigger,
        "outage_s": sc.timing.outage,
        "last_window_s": sc.timing.last_window,
    }


def _times(run: RunData, t0: float) -> dict[str, float]:
    """The run's instants (absolute monotonic seconds), and t0 against the trigger."""
    return {
        "t_start": run.t_start,
        "t_trigger": run.t_trigger,
        "t0": t0,
        "t_end": run.t_end,
        "t0_after_trigger_s": t0 - run.t_trigger,
        "observed_after_t0_s": run.t_end - t0,
    }


def _backlog(
    sc: Scenario, wfs: Sequence[Sequence[Any]], home_idx: int, t0: float
) -> list[Sequence[Any]]:
    """The backlog: the released workflows, or those of the storm's region still open at the
    first good probe (an outage)."""
    if sc.trigger == "reopen":
        return [w for w in wfs if w[1] == 1]
    return [w for w in wfs if w[2] == home_idx and w[4] < t0 and (w[5] is None or w[5] > t0)]


def _backlog_doc(run: RunData, backlog: Sequence[Sequence[Any]], t0: float) -> dict[str, Any]:
    """How the backlog drained: successes, the drain time against N / (C - λ₀), the release's
    spread, and what was left of it in the last window (metastability: none should be)."""
    sc = run.scenario
    t_end = run.t_end
    wfs: list[list[Any]] = run.fleet["workflows"]
    atts: list[list[Any]] = run.fleet["attempts"]
    cap, lam = sc.backend.capacity, sc.fresh_rate(sc.home)
    n_backlog = len(backlog)
    succeeded = [w for w in backlog if w[6] and w[5] <= t_end]
    last_success = max((w[5] for w in succeeded), default=None)
    drain_s = (
        last_success - t0 if last_success is not None and len(succeeded) == n_backlog else None
    )
    bound = n_backlog / (cap - lam) if cap > lam and n_backlog else None
    backlog_kind = {w[0] for w in wfs if w[1] == 1}  # ids are not positions with shards
    first_sends = [a[3] - t0 for a in atts if a[1] == 0 and a[0] in backlog_kind]
    lw_start = t_end - sc.timing.last_window
    backlog_ids = {w[0] for w in backlog}
    return {
        "n": n_backlog,
        "succeeded": len(succeeded),
        "failed": sum(1 for w in backlog if w[5] is not None and not w[6]),
        "unfinished": sum(1 for w in backlog if w[5] is None),
        "share": len(succeeded) / n_backlog if n_backlog else None,
        "drain_s": drain_s,
        "last_success_s": last_success - t0 if last_success is not None else None,
        "bound_s": bound,
        "drain_ratio": drain_s / bound if drain_s is not None and bound else None,
        "release_spread_ms": (max(first_sends) * 1000.0) if first_sends else None,
        # First attempts written at the release on connections opened ahead (prewarm).
        "release_prepared": run.fleet.get("release_prepared"),
        "open_at_last_window": sum(1 for w in backlog if w[5] is None or w[5] > lw_start),
        "attempts_in_last_window": sum(
            1 for a in atts if a[0] in backlog_ids and lw_start <= a[3] < t_end
        ),
        "series": backlog_series(backlog, t0, t_end),
    }


def _exhausted(sc: Scenario, wfs: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Workflows that used every attempt their profile allows and still failed."""
    retries = make_profile(
        sc.clients.profile, sc.clients.naive_retries, sc.clients.hostile_retries
    ).retries
    exhausted = [w for w in wfs if w[5] is not None and not w[6] and w[7] > retries]
    return {
        "retries": retries,
        "backlog": sum(1 for w in exhausted if w[1] == 1),
        "fresh": sum(1 for w in exhausted if w[1] == 0),
        "max_attempts": max((w[7] for w in wfs), default=0),
    }


def _other_region(
    run: RunData,
    ok_ids: set[str],
    before: tuple[float, float],
    after: tuple[float, float],
    t0: float,
) -> dict[str, Any] | None:
    """Two regions: the other region's local goodput at its backend and its local success,
    before the storm and during it (None with one region)."""
    sc = run.scenario
    regions = sc.regions
    if len(regions) <= 1:
        return None
    wfs: list[list[Any]] = run.fleet["workflows"]
    o_region = next(r for r in regions if r != sc.home)
    o_idx = regions.index(o_region)
    o_stats = run.backends.get(o_region) or {}
    local_ok = [c[0] for c in o_stats.get("completions", []) if not c[2] and c[1] in ok_ids]
    pre = rate_in(local_ok, run.t_start + 1.0, run.t_trigger)
    during = rate_in(local_ok, t0, run.t_end)
    return {
        "region": o_region,
        "local_goodput_before": pre,
        "local_goodput_during": during,
        "local_goodput_change": (during - pre) / pre if pre else None,
        "foreign_arrivals_during": count_in(
            (a[0] for a in o_stats.get("arrivals", []) if a[1]), t0, run.t_end
        ),
        "fresh_before": _fresh(wfs, o_idx, *before),
        "fresh_during": _fresh(wfs, o_idx, *after),
    }
