"""Runs one scenario arm end to end: backends, proxies, fleet, trigger, sampling, teardown.

Arms: `direct` (clients → backend), `passthrough` (clients → Sluice with `modes.protection:
off` → backend) and `sluice` (protection on). Every arm of a scenario gets the same seed, so the
same fresh arrivals, callers and backlog. Times are absolute `time.monotonic()` instants; the
harness picks them, the fleet and backends record against them. The children themselves are
started and spoken to in loadtest.arm_children.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .analysis import analyze
from .arm_children import (
    ArmUnavailable,
    Backend,
    PoolFor,
    Proxy,
    post_admin,
    probe_after,
    sample_status,
    sleep_until,
    start_backends,
    start_fleets,
    start_proxies,
)
from .arm_collect import (
    StatusSamples,
    Watched,
    collect_backends,
    collect_fleets,
    collect_metrics,
    cpu_shares,
    own_cpu,
    save_status,
)
from .arm_fleet import Front, servers_of, start_front, start_members
from .arm_schedule import Schedule, arm_budget, fleet_spec, schedule
from .balancer import SIDECAR_TRUST
from .fleet_redis import (
    METRICS_AROUND,
    RedisChild,
    RedisPlan,
    redis_fault,
    scrape_redis_up,
    sidecar_overrides,
    start_redis,
)
from .httpclient import Pool
from .procs import Child, ProcessGroup, machine_cpu
from .run_data import RunData
from .scenario import Scenario, sluice_config_path

ARMS: tuple[str, ...] = ("direct", "passthrough", "sluice")
FLEET_REGIONS = (
    "the fleet replay (--fleet/--lb) runs single-region scenarios (reopen, backend-outage); "
    "two-region has a backend per region and no balancer between them"
)


@dataclass
class ArmPlan:
    """One arm to run."""

    scenario: Scenario
    scenario_file: Path
    arm: str
    seed: int
    capacity_scale: float
    out_dir: Path
    sluice_config: Path | None = None  # None: the scenario's NAME.sluice.yaml
    fleet: int = 1  # K: backends (each with its sidecar) behind the balancer
    lb: str | None = None  # the balancer's algorithm; None: no balancer (K must be 1)
    redis: RedisPlan = field(default_factory=RedisPlan)  # shared state on Redis, a fault

    @property
    def tag(self) -> str:
        """File-name prefix of this arm's outputs."""
        scale = "" if self.capacity_scale == 1 else f"-x{self.capacity_scale:g}"
        fleet = "" if self.lb is None else f"-k{self.fleet}-{self.lb}"
        fleet += "-redis" if self.redis.shared else ""
        return f"{self.scenario.name}{scale}{fleet}-{self.arm}"


class _Children(NamedTuple):
    """An arm's servers: backends (by region, or a fleet's members by name), the proxies in
    front of them (same names; none in `direct`) and the balancer in front of all (a fleet)."""

    backends: dict[str, Backend]
    proxies: dict[str, Proxy]
    front: Front | None
    redis: RedisChild | None = None

    def targets(self, sc: Scenario) -> dict[str, str]:
        """Where each region's clients send: the balancer, else the region's proxy or (direct)
        its backend."""
        if self.front is not None:
            return {sc.home: f"http://127.0.0.1:{self.front.port}"}
        servers = self.proxies or self.backends
        return {r: f"http://127.0.0.1:{s.port}" for r, s in servers.items()}

    def measured(self) -> list[Child]:
        """Their children, in the order the results list their CPU."""
        front = [self.front.child] if self.front is not None else []
        redis = [self.redis.child] if self.redis is not None else []
        return (
            [b.child for b in self.backends.values()]
            + [p.child for p in self.proxies.values()]
            + front
            + redis
        )


async def run_arm(plan: ArmPlan) -> RunData:
    """Run one arm and return its raw data (children are always torn down)."""
    sc = plan.scenario
    raw_dir = plan.out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    wall0 = time.monotonic()
    group = ProcessGroup(plan.out_dir / "logs")
    pools: list[Pool] = []

    def pool(port: int) -> Pool:
        p = Pool("127.0.0.1", port)
        pools.append(p)
        return p

    try:
        children = await _start_children(plan, group, pool)
        sched = schedule(sc, time.monotonic())
        csv_prefix = str(plan.out_dir / plan.tag)
        spec = fleet_spec(sc, plan.seed, csv_prefix, children.targets(sc), sched)
        fleets = start_fleets(group, spec, plan.tag, plan.out_dir, raw_dir)
        # Whose CPU is measured, in the order the results list it.
        measured = [ch for ch, _ in fleets] + children.measured()
        samples: StatusSamples = {r: [] for r in children.proxies}
        shared = _shared_doc(children)
        watched = await _watch(
            plan, children, fleets, measured, samples, sched, pool,
            (group, shared) if shared is not None else None,
        )  # fmt: skip
        run = await _collect(plan, children, fleets, samples, sched)
        run.redis = shared
        run.cpu = cpu_shares(measured, plan.tag, watched)
        run.machine_busy_cores = watched.machine_busy / watched.span
        run.wall_s = time.monotonic() - wall0
        return run
    finally:
        for p in pools:
            p.close()
        group.stop_all()


async def _start_children(plan: ArmPlan, group: ProcessGroup, pool: PoolFor) -> _Children:
    """The backends, then the proxies in front of them, then a fleet's balancer."""
    sc = plan.scenario
    budget = arm_budget(sc)
    if plan.lb is None:
        backends = await start_backends(group, sc, plan.tag, plan.seed, budget, pool)
    elif len(sc.regions) > 1:
        raise ArmUnavailable(FLEET_REGIONS)
    else:
        backends = await start_members(group, sc, plan.tag, plan.seed, budget, pool, plan.fleet)
    redis = None
    if plan.redis.shared and plan.lb is not None and plan.arm != "direct":
        redis = await start_redis(group, f"{plan.tag}-redis", plan.out_dir / "redis", budget)
    proxies = await _start_proxies(plan, group, backends, pool, redis)
    front = None
    if plan.lb is not None:
        front = await start_front(
            group,
            plan.tag,
            plan.out_dir / "configs",
            servers_of(backends, proxies),
            plan.lb,
            sc.clients.timeout,
            budget,
        )
    return _Children(backends, proxies, front, redis)


def _shared_doc(children: _Children) -> dict[str, Any] | None:
    """The run's shared state as the results carry it (None: each sidecar on its own); the
    fault's events and each sidecar's scraped gauge are added as the run goes."""
    if children.redis is None:
        return None
    return {"url": children.redis.url, "events": [], "redis_up_metric": {}}


async def _collect(
    plan: ArmPlan,
    children: _Children,
    fleets: list[tuple[Child, Path]],
    samples: StatusSamples,
    sched: Schedule,
) -> RunData:
    """The records every child kept (also saved in raw/), as the arm's RunData."""
    sc, tag = plan.scenario, plan.tag
    raw_dir = plan.out_dir / "raw"
    fleet_data = await collect_fleets(fleets, sc.timing.grace)
    backend_stats = await collect_backends(children.backends, raw_dir, tag)
    finals = await save_status(children.proxies, samples, raw_dir, tag)
    metrics = await collect_metrics(children.proxies, raw_dir, tag) if plan.lb else {}
    home = _home_names(plan, children.backends)
    t0, t_trigger = _t0(sc, fleet_data, [backend_stats[n] for n in home], sched.t_trigger)
    return RunData(
        scenario=sc,
        arm=plan.arm,
        seed=plan.seed,
        capacity_scale=plan.capacity_scale,
        t_start=sched.t_start,
        t_trigger=t_trigger,
        t_end=sched.t_end,
        t0=t0,
        fleet=fleet_data,
        backends=backend_stats,
        proxy_samples=samples,
        members={sc.home: home} if plan.lb else {},
        lb=plan.lb,
        proxy_final=finals,
        proxy_metrics=metrics,
    )


def _home_names(plan: ArmPlan, backends: dict[str, Backend]) -> list[str]:
    """The storm region's backends: every member of a fleet, else the region's one."""
    return list(backends) if plan.lb is not None else [plan.scenario.home]


async def _start_proxies(
    plan: ArmPlan,
    group: ProcessGroup,
    backends: dict[str, Backend],
    pool: PoolFor,
    redis: RedisChild | None,
) -> dict[str, Proxy]:
    """A Sluice per backend unless the arm is `direct` (protection on for `sluice` only); a
    fleet's sidecars are the storm region's and believe forwarding headers from the balancer
    alone; with `redis`, each gets a `fleet:` section (the run's Redis, its own name)."""
    if plan.arm == "direct":
        return {}
    fleet = plan.lb is not None
    return await start_proxies(
        group,
        plan.tag,
        "on" if plan.arm == "sluice" else "off",
        plan.sluice_config or sluice_config_path(plan.scenario_file),
        plan.out_dir / "configs",
        backends,
        pool,
        region_of={name: plan.scenario.home for name in backends} if fleet else None,
        overrides={"trust": SIDECAR_TRUST} if fleet else None,
        own=sidecar_overrides(backends, redis.url) if redis else None,
    )


async def _watch(
    plan: ArmPlan,
    children: _Children,
    fleets: list[tuple[Child, Path]],
    measured: list[Child],
    samples: StatusSamples,
    sched: Schedule,
    pool: PoolFor,
    shared: tuple[ProcessGroup, dict[str, Any]] | None = None,
) -> Watched:
    """From the start to the end: the capacity step booked, CPU marks, /status samples, the
    outage switch and the harness's probes, a Redis fault; the fleet must stay alive
    throughout."""
    await _book_steps(plan, children.backends, sched)
    await sleep_until(sched.t_start)
    for ch in measured:
        ch.mark_cpu("start")
    own_start, machine_start = own_cpu(), machine_cpu()
    background = [
        asyncio.create_task(sample_status(proxy.admin, samples[name], sched.t_end))
        for name, proxy in children.proxies.items()
    ]
    try:
        if shared is not None and children.redis is not None and plan.redis.kill_at is not None:
            background += _fault(plan, children, children.redis, sched, *shared)
        if plan.scenario.trigger == "outage":
            home = [children.backends[n] for n in _home_names(plan, children.backends)]
            background += await _outage(plan.scenario, home, sched, pool)
        while time.monotonic() < sched.t_end:
            for fleet, _ in fleets:
                if not fleet.alive():
                    raise ArmUnavailable(f"the fleet exited early:\n{fleet.log_tail()}")
            await asyncio.sleep(min(0.2, max(0.0, sched.t_end - time.monotonic())))
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    for ch in measured:
        ch.mark_cpu("end")
    own_end, machine_end = own_cpu(), machine_cpu()
    harness = None if own_start is None or own_end is None else own_end - own_start
    span = time.monotonic() - sched.t_start
    return Watched(span, harness, machine_end[0] - machine_start[0])


def _fault(
    plan: ArmPlan,
    children: _Children,
    redis: RedisChild,
    sched: Schedule,
    group: ProcessGroup,
    shared: dict[str, Any],
) -> list[asyncio.Task[None]]:
    """The Redis fault of `plan.redis` and, around it, each sidecar's sluice_fleet_redis_up."""
    rp = plan.redis
    assert rp.kill_at is not None
    t_kill = sched.t_trigger + rp.kill_at
    lo, hi = t_kill - METRICS_AROUND[0], t_kill + rp.restart_after + METRICS_AROUND[1]
    budget_until = sched.t_start + arm_budget(plan.scenario)
    workdir = plan.out_dir / "redis"
    events = shared["events"]
    tasks = [asyncio.create_task(redis_fault(group, redis, rp, sched.t_trigger,
                                             workdir, budget_until, events))]  # fmt: skip
    for name, proxy in children.proxies.items():
        series: list[tuple[float, float | None]] = shared["redis_up_metric"].setdefault(name, [])
        tasks.append(asyncio.create_task(scrape_redis_up(proxy.admin, lo, min(hi, sched.t_end),
                                                         series)))  # fmt: skip
    return tasks


async def _book_steps(plan: ArmPlan, backends: dict[str, Backend], sched: Schedule) -> None:
    """The scenario's capacity step, booked at each backend (a fleet member: its share)."""
    t = plan.scenario.timing
    step = plan.scenario.backend.capacity_step
    if step is None:
        return
    for backend in backends.values():
        workers = backend.step_workers if backend.step_workers is not None else step.workers
        doc = {"workers": workers, "at": sched.t_trigger + t.outage + step.at}
        await post_admin(backend.admin, "/admin/workers", doc)


async def _outage(
    sc: Scenario, home: list[Backend], sched: Schedule, pool: PoolFor
) -> list[asyncio.Task[None]]:
    """At the trigger, every backend of the storm region fails together (a fleet's members
    too: the incident's shape); the harness's probes of each, from just before the end."""
    outage_end = sched.t_trigger + sc.timing.outage
    probes = [asyncio.create_task(probe_after(pool(b.port), outage_end)) for b in home]
    await sleep_until(sched.t_trigger)
    doc = {"seconds": sc.timing.outage}
    await asyncio.gather(*(post_admin(b.admin, "/admin/outage", doc) for b in home))
    return probes


def _t0(
    sc: Scenario,
    fleet_data: dict[str, Any],
    home: list[dict[str, Any]],
    t_trigger: float,
) -> tuple[float | None, float]:
    """t0 (the release, or the first good probe after an outage; None if not seen) and the
    trigger instant (for an outage, when the switch really flipped). `home`: the stats of the
    storm region's backends; with several (a fleet), t0 is when the last of them answered a
    probe (the fleet's whole capacity back) and the trigger when the first one failed."""
    if sc.trigger == "reopen":
        return fleet_data.get("t_release"), t_trigger
    probes = [st.get("first_good_probe") for st in home]
    starts = [st["outages"][0][0] for st in home if st.get("outages")]
    t0 = None if not probes or None in probes else max(p for p in probes if p is not None)
    return t0, min(starts, default=t_trigger)


def run_arm_sync(plan: ArmPlan) -> dict[str, Any]:
    """Run one arm and analyse it; an arm that cannot run yields {"unavailable": reason}."""
    try:
        data = asyncio.run(run_arm(plan))
    except ArmUnavailable as exc:
        return {"scenario": plan.scenario.name, "arm": plan.arm, "unavailable": str(exc)}
    return analyze(data)
