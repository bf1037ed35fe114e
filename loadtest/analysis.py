"""From raw records to the figures of one arm (pure functions, no I/O).

Raw records (all times absolute `time.monotonic()` seconds, shared by every process):
- fleet workflows: [id, kind (0 fresh / 1 backlog), home region index, caller index,
  intended start, end (None if unfinished), ok (0/1), attempts]
- fleet attempts: (workflow id, attempt, target region index, sent, done, code, retry-after s)
  where code is "200", "timeout", "connection-error" or "<status> <reason>"
- backend stats (per region): arrivals (t, foreign), completions (t, request id, foreign, gone),
  samples (t, busy, queued), peaks, first good probe after an outage.
- proxy samples (per region): (t, /status document).

Windows: *before* is [start + 1 s, trigger - T); *after* is [t0, end - settle) for fresh
workflows (settle lets late starters finish), [t0, end] for rates; the *last window* is the final
`last_window` seconds before the end. Percentiles are nearest-rank.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .fleet_shared import shared_doc
from .lb_analysis import lb_doc, region_stats
from .profiles import make_profile
from .scenario import Scenario

LAG_LIMIT_MS = 20.0  # a run whose generator lag p99 passes this measures the generator
FLEET_CPU_WARN = 0.7  # share of one core above which the generator is close to saturating
MACHINE_BUSY_WARN = 1.8  # cores (of 2) busy over the run: other work competes for the CPU
SETTLE = 2.0  # fresh workflows starting this close to the end are left out of ratios
TIMELINE_BIN = 0.5
SERIES_BIN = 0.1  # the backlog series (successes per bin, open workflows) from t0


@dataclass
class RunData:
    """Everything one arm's run produced."""

    scenario: Scenario
    arm: str
    seed: int
    capacity_scale: float
    t_start: float
    t_trigger: float
    t_end: float
    t0: float | None
    fleet: dict[str, Any]
    backends: dict[str, dict[str, Any]]
    proxy_samples: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    machine_busy_cores: float | None = None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    # A fleet arm (issue 18): its region's members (backend/sidecar names), the balancer's
    # algorithm, each sidecar's final /status and /metrics counters. Empty / None otherwise.
    members: dict[str, list[str]] = field(default_factory=dict)
    lb: str | None = None
    proxy_final: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxy_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The fleet's shared state (--fleet-redis): its URL, a fault's events, the scraped gauge.
    redis: dict[str, Any] | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def count_in(times: Iterable[float], lo: float, hi: float) -> int:
    """How many of `times` fall in [lo, hi)."""
    return sum(1 for t in times if lo <= t < hi)


def rate_in(times: Iterable[float], lo: float, hi: float) -> float:
    """Events per second in [lo, hi)."""
    return count_in(times, lo, hi) / (hi - lo) if hi > lo else 0.0


def bin_counts(times: Iterable[float], lo: float, hi: float, width: float) -> list[int]:
    """Counts of `times` per bin of `width` seconds from `lo` (bins cover [lo, hi))."""
    n = max(0, math.ceil((hi - lo) / width))
    out = [0] * n
    for t in times:
        i = int((t - lo) // width)
        if 0 <= i < n:
            out[i] += 1
    return out


def bin_max(
    points: Iterable[tuple[float, float]], lo: float, hi: float, width: float
) -> list[float]:
    """Max value per bin of (t, value) points (0 for empty bins)."""
    n = max(0, math.ceil((hi - lo) / width))
    out = [0.0] * n
    for t, v in points:
        i = int((t - lo) // width)
        if 0 <= i < n and v > out[i]:
            out[i] = v
    return out


def request_id(wf_id: int, attempt: int) -> str:
    """The x-request-id the fleet sends for an attempt (the backend records it)."""
    return f"{wf_id:x}.{attempt}"


def status_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """Mode, limit, in-flight and queued from a /status document, tolerant of its shape."""

    def num(v: Any) -> float | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, dict):
            for key in ("depth", "total", "size", "length", "current", "value", "limit"):
                if isinstance(v.get(key), int | float):
                    return float(v[key])
            parts = [
                x for x in v.values() if isinstance(x, int | float) and not isinstance(x, bool)
            ]
            return float(sum(parts)) if parts else None
        return None

    limiter = doc.get("limiter") if isinstance(doc.get("limiter"), dict) else {}
    limit = num(doc.get("limit"))
    if limit is None and limiter:
        limit = num(limiter.get("limit"))
    queued = None
    for key in ("queued", "queue_depth", "queue", "deferred", "waiting"):
        if key in doc:
            queued = num(doc[key])
            if queued is not None:
                break
    in_flight = num(doc.get("in_flight"))
    if in_flight is None and limiter:
        in_flight = num(limiter.get("in_flight"))
    mode = doc.get("mode")
    drain = doc.get("drain")
    drain = drain if isinstance(drain, dict) else {}
    return {
        "mode": mode if isinstance(mode, str) else None,
        "limit": limit,
        "in_flight": in_flight,
        "queued": queued,
        # The drain ETA Sluice showed (RECOVERY only; None when it showed none).
        "eta_s": num(drain.get("eta_s")),
    }


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
    work = _backend_work(run, atts, backlog, ok_ids, t0)
    validity = _validity(run, notes)
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


class _Work(NamedTuple):
    """What the backends did from t0 on, against the work the clients owed."""

    amplification: float | None
    first_tries: int
    arrivals: int
    wasted_fraction: float | None
    backends: dict[str, Any]


def _backend_work(
    run: RunData,
    atts: Sequence[Sequence[Any]],
    backlog: Sequence[Sequence[Any]],
    ok_ids: set[str],
    t0: float,
) -> _Work:
    """Each backend's figures from t0, amplification (backend arrivals per unit of work owed)
    and the share of completed work nobody received (wasted)."""
    first_tries = count_in((a[3] for a in atts if a[1] == 0), t0, run.t_end)
    docs = {r: _backend_doc(st, ok_ids, t0, run.t_end) for r, st in run.backends.items()}
    arrivals = sum(d["arrivals"] for d in docs.values())
    completed = sum(d["completed"] for d in docs.values())
    wasted = sum(d["wasted"] for d in docs.values())
    # Work owed at t0 counts as a first try: after an outage the open workflows made theirs
    # before t0, yet each still needs one attempt (without this, a perfect drain of N would
    # read as (λ₀·T + N) / (λ₀·T) amplification).
    first_try_at = {a[0]: a[3] for a in atts if a[1] == 0}
    carried = sum(1 for w in backlog if first_try_at.get(w[0], t0) < t0)
    units = first_tries + carried
    return _Work(
        amplification=arrivals / units if units else None,
        first_tries=first_tries,
        arrivals=arrivals,
        wasted_fraction=wasted / completed if completed else None,
        backends=docs,
    )


def _backend_doc(st: dict[str, Any], ok_ids: set[str], t0: float, t_end: float) -> dict[str, Any]:
    """One backend's figures over [t0, t_end)."""
    arr = count_in((a[0] for a in st["arrivals"]), t0, t_end)
    comp = [c for c in st["completions"] if t0 <= c[0] < t_end]
    window_samples = [s for s in st["samples"] if t0 <= s[0] < t_end]
    return {
        "capacity": st["capacity"],
        "workers": st["config"]["workers"],
        "arrivals": arr,
        "completed": len(comp),
        "wasted": sum(1 for c in comp if c[1] not in ok_ids),
        "client_gone": sum(1 for c in comp if c[3]),
        "rejected": Counter(r[2] for r in st["rejections"]),
        "peak_queue": st["peak_queue"],
        "peak_queue_after_t0_sampled": max((s[2] for s in window_samples), default=0),
        "peak_busy": st["peak_busy"],
        "first_good_probe": st.get("first_good_probe"),
        # A capacity step (t from t0, old workers, new workers) and the busy/queue samples
        # from t0 (t from t0): what the backend did when its capacity changed.
        "steps": [(round(x[0] - t0, 4), x[1], x[2]) for x in st.get("steps", [])],
        "samples_after_t0": [
            (round(x[0] - t0, 3), x[1], x[2]) for x in st["samples"] if t0 <= x[0] < t_end
        ],
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


def _validity(run: RunData, notes: list[str]) -> dict[str, Any]:
    """Whether the run measured the system rather than the generator (its loop lag, dropped
    arrivals), with CPU figures; what only deserves a warning is added to `notes`."""
    t_start, t_end = run.t_start, run.t_end
    lags = [lag * 1000.0 for t, lag in run.fleet.get("lag", []) if t_start <= t <= t_end]
    lag_p99 = percentile(lags, 99)
    invalid: list[str] = []
    if lag_p99 is not None and lag_p99 > LAG_LIMIT_MS:
        invalid.append(f"generator loop lag p99 {lag_p99:.1f} ms > {LAG_LIMIT_MS:.0f} ms")
    if run.fleet.get("dropped_arrivals"):
        invalid.append(f"{run.fleet['dropped_arrivals']} arrivals dropped by the generator")
    late = run.fleet.get("t_started", t_start) - t_start
    if late > 0.1:
        notes.append(f"generator started {late * 1000:.0f} ms late")
    if run.machine_busy_cores is not None and run.machine_busy_cores > MACHINE_BUSY_WARN:
        own = sum(run.cpu.values())
        notes.append(
            f"machine near saturation: {run.machine_busy_cores:.2f} cores busy, "
            f"{own:.2f} of them this run's processes"
        )
    fleet_cpus = [v for k, v in run.cpu.items() if k == "fleet" or k.startswith("fleet-")]
    fleet_cpu = max(fleet_cpus, default=None)  # per process: each has one core at most
    if fleet_cpu is not None and fleet_cpu > FLEET_CPU_WARN:
        notes.append(f"generator used {fleet_cpu:.0%} of a core (close to saturating)")
    return {
        "valid": not invalid,
        "invalid_reasons": invalid,
        "loop_lag_p50_ms": percentile(lags, 50),
        "loop_lag_p99_ms": lag_p99,
        "loop_lag_max_ms": max(lags) if lags else None,
        "cpu_share": run.cpu,
        "machine_busy_cores": run.machine_busy_cores,
        "dropped_arrivals": run.fleet.get("dropped_arrivals", 0),
    }


def backlog_series(
    backlog: Sequence[Sequence[Any]], t0: float, t_end: float, width: float = SERIES_BIN
) -> dict[str, Any]:
    """From t0 to the end in bins of `width`: the backlog workflows that succeeded in each bin
    (`ok`) and those still open (not finished) at each bin's start (`open`)."""
    n = max(0, math.ceil((t_end - t0) / width - 1e-9))
    ok = bin_counts((w[5] for w in backlog if w[6] and w[5] is not None), t0, t0 + n * width, width)
    ends = sorted(w[5] for w in backlog if w[5] is not None)
    total = len(backlog)
    # Open at a bin's start: not finished by then (a workflow ending exactly there is closed).
    open_ = [total - bisect.bisect_right(ends, t0 + i * width) for i in range(n)]
    return {"bin_s": width, "ok": ok, "open": open_}


def timeline(run: RunData, t0: float) -> dict[str, Any]:
    """Per-bin series for the plot, x in seconds from t0."""
    sc = run.scenario
    lo = run.t_start
    hi = run.t_end + sc.timing.grace
    w = TIMELINE_BIN
    atts = run.fleet["attempts"]
    wfs = run.fleet["workflows"]
    ok_ids = {request_id(a[0], a[1]) for a in atts if a[5] == "200"}
    n = max(0, math.ceil((hi - lo) / w))
    out: dict[str, Any] = {
        "bin_s": w,
        "x": [round(lo + (i + 0.5) * w - t0, 3) for i in range(n)],
        "regions": {},
    }
    for i, region in enumerate(sc.regions):
        st = region_stats(run.backends, run.members.get(region, [region]), lo, hi, w)
        comps = st.get("completions", [])
        reg: dict[str, Any] = {
            "fresh_offered": [
                c / w for c in bin_counts((x[4] for x in wfs if x[1] == 0 and x[2] == i), lo, hi, w)
            ],
            "client_ok": [
                c / w
                for c in bin_counts((a[4] for a in atts if a[5] == "200" and a[2] == i), lo, hi, w)
            ],
            "offered": [c / w for c in bin_counts((a[3] for a in atts if a[2] == i), lo, hi, w)],
            "backend_useful": [
                c / w for c in bin_counts((c[0] for c in comps if c[1] in ok_ids), lo, hi, w)
            ],
            "backend_local_useful": [
                c / w
                for c in bin_counts((c[0] for c in comps if c[1] in ok_ids and not c[2]), lo, hi, w)
            ],
            "backend_wasted": [
                c / w for c in bin_counts((c[0] for c in comps if c[1] not in ok_ids), lo, hi, w)
            ],
            "backend_busy": bin_max(((s[0], s[1]) for s in st.get("samples", [])), lo, hi, w),
            "backend_queue": bin_max(((s[0], s[2]) for s in st.get("samples", [])), lo, hi, w),
            "workers": st.get("config", {}).get("workers"),
        }
        samples = run.proxy_samples.get(region, [])
        if samples:
            reg["proxy"] = proxy_series(samples, t0)
        members = run.members.get(region, [])
        if members:  # a fleet's sidecars, each its own series
            reg["proxies"] = {
                m: proxy_series(run.proxy_samples[m], t0)
                for m in members
                if run.proxy_samples.get(m)
            }
        out["regions"][region] = reg
    return out


def proxy_series(samples: Sequence[tuple[float, dict[str, Any]]], t0: float) -> dict[str, Any]:
    """A proxy's /status samples as the plot's series, x in seconds from t0."""
    figs = [(t - t0, status_figures(doc)) for t, doc in samples]
    return {
        "t": [round(t, 3) for t, _ in figs],
        "mode": [f["mode"] for _, f in figs],
        "limit": [f["limit"] for _, f in figs],
        "in_flight": [f["in_flight"] for _, f in figs],
        "queued": [f["queued"] for _, f in figs],
        "eta_s": [f["eta_s"] for _, f in figs],
    }
