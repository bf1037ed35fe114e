"""An arm's clock and what its client fleet is asked to do: when the fleet starts, spawns its
backlog, starts its traffic, triggers and ends (absolute `time.monotonic()` instants), how many
processes it takes, how long any child of the arm may live, and the fleet's spec.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .fleet_spec import FleetSpec
from .profiles import make_profile
from .scenario import Scenario

FLEET_STARTUP = 1.5  # s between starting the fleet and its first arrival
# What one fleet process drives of the real SDK (`azure-sdk`, ~1.5 ms of CPU per get_token)
# with its loop lag p99 under the validity limit: measured in reopen, where one process at x2
# (N = 2,000, λ₀ = 240/s) saturated its core before the release and lagged by seconds.
SDK_BACKLOG_PER_FLEET = 1000
SDK_FRESH_PER_FLEET = 150.0  # req/s


def fleet_processes(real_sdk: bool, backlog: int, fresh_total: float, configured: int = 0) -> int:
    """How many fleet processes share the clients: `configured` if set, else one, or for the
    real SDK as many as its backlog and fresh traffic need."""
    if configured:
        return configured
    if not real_sdk:
        return 1
    return max(
        1,
        math.ceil(backlog / SDK_BACKLOG_PER_FLEET),
        math.ceil(fresh_total / SDK_FRESH_PER_FLEET),
    )


# A warm-up shorter than the backlog's spawn (connect and prepare each blocked workflow) plus
# this margin spawns the backlog before the fleet's start instead (a cold start's release then
# still finds every workflow ready); the fleet starts that much earlier.
BACKLOG_SPAWN_MARGIN = 1.0
# A blocked workflow's prepared connection may sit idle this long before the release at most:
# with a longer warm-up the backlog is spawned later (just before the release), because a proxy
# closes a connection that sends no request (Sluice: listen.header_read_timeout, 10 s).
BACKLOG_IDLE_MAX = 6.0


def arm_budget(scenario: Scenario) -> float:
    """Seconds any child of one arm of `scenario` may live (its `--max-lifetime`): the run's
    own length (with an early backlog spawn) plus a minute for starting, collecting and
    stopping."""
    t = scenario.timing
    lead = backlog_lead(scenario)
    return FLEET_STARTUP + lead + t.warmup + t.outage + t.observe + t.grace + 60.0


class Schedule(NamedTuple):
    """An arm's instants (absolute monotonic seconds)."""

    fleet_ready: float  # the fleet's first arrival could be from here (after its start-up)
    t_start: float  # fresh traffic starts (the backlog may be spawned before)
    t_trigger: float  # the release, or the outage switch
    t_end: float


def schedule(sc: Scenario, now: float) -> Schedule:
    """The arm's instants from `now`: the fleet's start-up (and any early backlog spawn), the
    warm-up, the outage and the observation."""
    t = sc.timing
    t_start = now + FLEET_STARTUP + backlog_lead(sc)
    t_trigger = t_start + t.warmup
    return Schedule(now + FLEET_STARTUP, t_start, t_trigger, t_trigger + t.outage + t.observe)


def fleet_spec(
    sc: Scenario, seed: int, csv_prefix: str, targets: dict[str, str], sched: Schedule
) -> FleetSpec:
    """What the fleet is asked to do: the scenario's clients against `targets` on `sched`,
    their Locust-style CSVs named `csv_prefix`…"""
    regions = sc.regions
    c = sc.clients
    backlog = sc.traffic.backlog if sc.trigger == "reopen" else 0
    shards = fleet_processes(
        make_profile(c.profile).real_sdk,
        backlog,
        sum(sc.fresh_rate(r) for r in regions),
        c.fleet_processes,
    )
    return FleetSpec(
        seed=seed,
        regions=regions,
        targets=targets,
        fresh_rate={r: sc.fresh_rate(r) for r in regions},
        callers=[(x.name, x.weight) for x in c.callers],
        profile=c.profile,
        timeout=c.timeout,
        t_start=sched.t_start,
        t_end=sched.t_end,
        backlog=backlog,
        backlog_region=sc.home,
        t_release=sched.t_trigger if sc.trigger == "reopen" else None,
        prewarm=c.prewarm,
        failover=c.failover,
        naive_retries=c.naive_retries,
        naive_retry_delay=c.naive_retry_delay,
        hostile_retries=c.hostile_retries,
        hostile_rate_cap=c.hostile_rate_cap,
        retry_after_jitter=c.retry_after_jitter,
        grace=sc.timing.grace,
        csv_prefix=csv_prefix,
        identities_per_caller=c.identities_per_caller,
        shards=shards,
        t_backlog_spawn=backlog_spawn_at(sc, sched.fleet_ready, sched.t_trigger),
    )


def backlog_lead(sc: Scenario) -> float:
    """Seconds the fleet starts early to spawn a `reopen` backlog before its start: 0 unless the
    warm-up is shorter than the backlog's spawn (at the fleet's rate) plus a margin."""
    n = sc.traffic.backlog if sc.trigger == "reopen" else 0
    if n <= 0:
        return 0.0
    spawn = n / max(200.0, n / 2.0) + BACKLOG_SPAWN_MARGIN
    return spawn if sc.timing.warmup < spawn else 0.0


def backlog_spawn_at(sc: Scenario, fleet_ready: float, t_release: float) -> float | None:
    """When the fleet spawns a `reopen` backlog (None: from its start, during the warm-up):
    before its start when the warm-up is short (`backlog_lead`); shortly before the release
    when the warm-up is longer than BACKLOG_IDLE_MAX, so no prepared connection idles longer."""
    n = sc.traffic.backlog if sc.trigger == "reopen" else 0
    if n <= 0:
        return None
    if backlog_lead(sc) > 0:
        return fleet_ready
    if sc.timing.warmup > BACKLOG_IDLE_MAX:
        spawn = n / max(200.0, n / 2.0) + BACKLOG_SPAWN_MARGIN
        return t_release - spawn
    return None
