"""Runs one scenario arm end to end: backends, proxies, fleet, trigger, sampling, teardown.

Arms: `direct` (clients → backend), `passthrough` (clients → Sluice with `modes.protection:
off` → backend) and `sluice` (protection on). Every arm of a scenario gets the same seed, so the
same fresh arrivals, callers and backlog. Times are absolute `time.monotonic()` instants; the
harness picks them, the fleet and backends record against them. The children themselves are
started and spoken to in loadtest.arm_children.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .analysis import RunData, analyze
from .arm_children import (
    ArmUnavailable,
    Backend,
    PoolFor,
    Proxy,
    get_json,
    post_admin,
    probe_after,
    sample_status,
    sleep_until,
    start_backends,
    start_fleets,
    start_proxies,
)
from .fleet_spec import FleetSpec, merge_outputs
from .httpclient import Pool
from .procs import Child, ProcessGroup, machine_cpu
from .profiles import make_profile
from .scenario import Scenario, sluice_config_path

ARMS: tuple[str, ...] = ("direct", "passthrough", "sluice")
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

    @property
    def tag(self) -> str:
        """File-name prefix of this arm's outputs."""
        scale = "" if self.capacity_scale == 1 else f"-x{self.capacity_scale:g}"
        return f"{self.scenario.name}{scale}-{self.arm}"


def arm_budget(scenario: Scenario) -> float:
    """Seconds any child of one arm of `scenario` may live (its `--max-lifetime`): the run's
    own length (with an early backlog spawn) plus a minute for starting, collecting and
    stopping."""
    t = scenario.timing
    lead = backlog_lead(scenario)
    return FLEET_STARTUP + lead + t.warmup + t.outage + t.observe + t.grace + 60.0


class _Schedule(NamedTuple):
    """An arm's instants (absolute monotonic seconds)."""

    fleet_ready: float  # the fleet's first arrival could be from here (after its start-up)
    t_start: float  # fresh traffic starts (the backlog may be spawned before)
    t_trigger: float  # the release, or the outage switch
    t_end: float


class _Watched(NamedTuple):
    """CPU over the measured span, from `t_start` to `t_end`."""

    span: float
    harness: float | None  # this process's CPU seconds
    machine_busy: float  # the machine's busy CPU seconds


async def run_arm(plan: ArmPlan) -> RunData:
    """Run one arm and return its raw data (children are always torn down)."""
    sc = plan.scenario
    tag = plan.tag
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
        backends = await start_backends(group, sc, tag, plan.seed, arm_budget(sc), pool)
        proxies = await _start_proxies(plan, group, backends, pool)
        sched = _schedule(sc, time.monotonic())
        targets = {r: f"http://127.0.0.1:{proxy.port}" for r, proxy in proxies.items()}
        if plan.arm == "direct":
            targets = {r: f"http://127.0.0.1:{b.port}" for r, b in backends.items()}
        spec = _fleet_spec(plan, targets, sched)
        fleets = start_fleets(group, spec, tag, plan.out_dir, raw_dir)
        # Whose CPU is measured, in the order the results list it.
        measured = (
            [ch for ch, _ in fleets]
            + [b.child for b in backends.values()]
            + [p.child for p in proxies.values()]
        )
        samples: dict[str, list[tuple[float, dict[str, Any]]]] = {r: [] for r in proxies}
        watched = await _watch(plan, backends, proxies, fleets, measured, samples, sched, pool)
        fleet_data = await _collect_fleets(fleets, sc.timing.grace)
        backend_stats = await _collect_backends(backends, raw_dir, tag)
        await _save_status(proxies, samples, raw_dir, tag)
        t0, t_trigger = _t0(sc, fleet_data, backend_stats, sched.t_trigger)
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
            cpu=_cpu_shares(measured, tag, watched),
            machine_busy_cores=watched.machine_busy / watched.span,
            wall_s=time.monotonic() - wall0,
        )
    finally:
        for p in pools:
            p.close()
        group.stop_all()


async def _start_proxies(
    plan: ArmPlan, group: ProcessGroup, backends: dict[str, Backend], pool: PoolFor
) -> dict[str, Proxy]:
    """A Sluice per region unless the arm is `direct` (protection on for `sluice` only)."""
    if plan.arm == "direct":
        return {}
    return await start_proxies(
        group,
        plan.tag,
        "on" if plan.arm == "sluice" else "off",
        plan.sluice_config or sluice_config_path(plan.scenario_file),
        plan.out_dir / "configs",
        backends,
        pool,
    )


def _schedule(sc: Scenario, now: float) -> _Schedule:
    """The arm's instants from `now`: the fleet's start-up (and any early backlog spawn), the
    warm-up, the outage and the observation."""
    t = sc.timing
    t_start = now + FLEET_STARTUP + backlog_lead(sc)
    t_trigger = t_start + t.warmup
    return _Schedule(now + FLEET_STARTUP, t_start, t_trigger, t_trigger + t.outage + t.observe)


def _fleet_spec(plan: ArmPlan, targets: dict[str, str], sched: _Schedule) -> FleetSpec:
    """What the fleet is asked to do: the scenario's clients against `targets` on `sched`."""
    sc = plan.scenario
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
        seed=plan.seed,
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
        csv_prefix=str(plan.out_dir / plan.tag),
        identities_per_caller=c.identities_per_caller,
        shards=shards,
        t_backlog_spawn=backlog_spawn_at(sc, sched.fleet_ready, sched.t_trigger),
    )


async def _watch(
    plan: ArmPlan,
    backends: dict[str, Backend],
    proxies: dict[str, Proxy],
    fleets: list[tuple[Child, Path]],
    measured: list[Child],
    samples: dict[str, list[tuple[float, dict[str, Any]]]],
    sched: _Schedule,
    pool: PoolFor,
) -> _Watched:
    """From the start to the end: the capacity step booked, CPU marks, /status samples, the
    outage switch and the harness's probes; the fleet must stay alive throughout."""
    sc = plan.scenario
    t = sc.timing
    step = sc.backend.capacity_step
    if step is not None:
        for backend in backends.values():
            doc = {"workers": step.workers, "at": sched.t_trigger + t.outage + step.at}
            await post_admin(backend.admin, "/admin/workers", doc)
    await sleep_until(sched.t_start)
    for ch in measured:
        ch.mark_cpu("start")
    own_start, machine_start = _own_cpu(), machine_cpu()
    background = [
        asyncio.create_task(sample_status(proxy.admin, samples[region], sched.t_end))
        for region, proxy in proxies.items()
    ]
    if sc.trigger == "outage":
        home = backends[sc.home]
        outage_end = sched.t_trigger + t.outage
        background.append(asyncio.create_task(probe_after(pool(home.port), outage_end)))
        await sleep_until(sched.t_trigger)
        await post_admin(home.admin, "/admin/outage", {"seconds": t.outage})
    try:
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
    own_end, machine_end = _own_cpu(), machine_cpu()
    harness = None if own_start is None or own_end is None else own_end - own_start
    span = time.monotonic() - sched.t_start
    return _Watched(span, harness, machine_end[0] - machine_start[0])


async def _collect_fleets(fleets: list[tuple[Child, Path]], grace: float) -> dict[str, Any]:
    """The fleet's records once each process has finished (its shards merged)."""
    outs: list[dict[str, Any]] = []
    for fleet, fleet_out in fleets:
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(fleet.popen.wait, grace + 20.0)
        if fleet.alive() or not fleet_out.exists():
            raise ArmUnavailable(f"the fleet did not finish:\n{fleet.log_tail()}")
        outs.append(orjson.loads(fleet_out.read_bytes()))
    return merge_outputs(outs)


async def _collect_backends(
    backends: dict[str, Backend], raw_dir: Path, tag: str
) -> dict[str, dict[str, Any]]:
    """Each backend's /stats (raw records included), also kept in `raw_dir`."""
    stats: dict[str, dict[str, Any]] = {}
    for region, backend in backends.items():
        doc = await get_json(backend.admin, "/stats", timeout=10.0)
        if doc is None:
            raise ArmUnavailable(f"no stats from backend {region}")
        stats[region] = doc
        (raw_dir / f"{tag}-backend-{region}.json").write_bytes(orjson.dumps(doc))
    return stats


async def _save_status(
    proxies: dict[str, Proxy],
    samples: dict[str, list[tuple[float, dict[str, Any]]]],
    raw_dir: Path,
    tag: str,
) -> None:
    """Each proxy's /status samples and its final /status, kept in `raw_dir`."""
    for region, proxy in proxies.items():
        final = await get_json(proxy.admin, "/status", timeout=2.0)
        (raw_dir / f"{tag}-sluice-{region}-status.json").write_bytes(
            orjson.dumps({"samples": samples[region], "final": final})
        )


def _cpu_shares(measured: list[Child], tag: str, watched: _Watched) -> dict[str, float]:
    """Each measured child's CPU as a share of one core over the span, and the harness's."""
    cpu: dict[str, float] = {}
    for ch in measured:
        if "start" in ch.cpu_marks and "end" in ch.cpu_marks:
            label = ch.name.removeprefix(f"{tag}-")
            cpu[label] = (ch.cpu_marks["end"] - ch.cpu_marks["start"]) / watched.span
    if watched.harness is not None:
        cpu["harness"] = watched.harness / watched.span
    return cpu


def _t0(
    sc: Scenario,
    fleet_data: dict[str, Any],
    backend_stats: dict[str, dict[str, Any]],
    t_trigger: float,
) -> tuple[float | None, float]:
    """t0 (the release, or the first good probe after an outage; None if not seen) and the
    trigger instant (for an outage, when the switch really flipped)."""
    if sc.trigger == "reopen":
        return fleet_data.get("t_release"), t_trigger
    home = backend_stats[sc.home]
    outages = home.get("outages") or []
    return home.get("first_good_probe"), outages[0][0] if outages else t_trigger


def _own_cpu() -> float | None:
    """This process's user + system CPU seconds so far."""
    t = os.times()
    return t.user + t.system


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


def run_arm_sync(plan: ArmPlan) -> dict[str, Any]:
    """Run one arm and analyse it; an arm that cannot run yields {"unavailable": reason}."""
    try:
        data = asyncio.run(run_arm(plan))
    except ArmUnavailable as exc:
        return {"scenario": plan.scenario.name, "arm": plan.arm, "unavailable": str(exc)}
    return analyze(data)
