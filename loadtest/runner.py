"""Runs one scenario arm end to end: backends, proxies, fleet, trigger, sampling, teardown.

Arms: `direct` (clients → backend), `passthrough` (clients → Sluice with `modes.protection:
off` → backend) and `sluice` (protection on). Every arm of a scenario gets the same seed, so the
same fresh arrivals, callers and backlog. Times are absolute `time.monotonic()` instants; the
harness picks them, the fleet and backends record against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from .analysis import RunData, analyze
from .fleet import FleetSpec, merge_outputs
from .httpclient import ConnectError, Pool
from .procs import Child, ProcessGroup, free_port, machine_cpu, write_sluice_config
from .profiles import make_profile
from .scenario import Scenario, sluice_config_path

ARMS: tuple[str, ...] = ("direct", "passthrough", "sluice")
FLEET_STARTUP = 1.5  # s between starting the fleet and its first arrival
STATUS_EVERY = 0.25  # s between /status samples of each proxy
PROBE_EVERY = 0.1  # s between the harness's own backend health probes after an outage
READY_TIMEOUT = 15.0
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


class ArmUnavailable(Exception):
    """An arm could not run (e.g. the proxy did not start); the message says why."""


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


async def _get_json(pool: Pool, path: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        resp = await pool.request("GET", path, timeout=timeout, keep_body=True)
    except (TimeoutError, ConnectError):
        return None
    if resp.status != 200:
        return None
    try:
        doc = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


async def _wait_ready(child: Child, pool: Pool, path: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise ArmUnavailable(f"{child.name} exited early:\n{child.log_tail()}")
        if await _get_json(pool, path, timeout=0.5) is not None:
            return
        await asyncio.sleep(0.05)
    raise ArmUnavailable(f"{child.name} not ready after {timeout:.0f} s:\n{child.log_tail()}")


async def _wait_port(child: Child, port: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise ArmUnavailable(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise ArmUnavailable(f"{child.name}: port {port} not accepting after {timeout:.0f} s")


def write_proxy_config(
    base_file: Path,
    dest: Path,
    *,
    port: int,
    upstream_port: int,
    admin_port: int,
    region: str,
    protection: str,
) -> Path:
    """The scenario's Sluice config with this run's ports, region and protection filled in."""
    return write_sluice_config(
        dest,
        port=port,
        upstream_port=upstream_port,
        admin_port=admin_port,
        base=yaml.safe_load(base_file.read_text(encoding="utf-8")) or {},
        overrides={"region": {"name": region}, "modes": {"protection": protection}},
    )


async def check_proxy_config(path: Path) -> None:
    """Validate with `python -m proxy check-config` (raises ArmUnavailable with its errors)."""
    proc = await asyncio.create_subprocess_exec(
        *_python(), "-m", "proxy", "check-config", str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30.0)
    if proc.returncode != 0:
        raise ArmUnavailable(f"config {path} rejected:\n{out.decode(errors='replace')}")


def _python() -> list[str]:
    return [sys.executable]


def arm_budget(scenario: Scenario) -> float:
    """Seconds any child of one arm of `scenario` may live (its `--max-lifetime`): the run's
    own length (with an early backlog spawn) plus a minute for starting, collecting and
    stopping."""
    t = scenario.timing
    lead = backlog_lead(scenario)
    return FLEET_STARTUP + lead + t.warmup + t.outage + t.observe + t.grace + 60.0


async def run_arm(plan: ArmPlan) -> RunData:
    """Run one arm and return its raw data (children are always torn down)."""
    sc = plan.scenario
    regions = sc.regions
    tag = plan.tag
    raw_dir = plan.out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    t = sc.timing
    lead = backlog_lead(sc)
    budget = arm_budget(sc)
    wall0 = time.monotonic()
    group = ProcessGroup(plan.out_dir / "logs")
    pools: list[Pool] = []

    def pool(port: int) -> Pool:
        p = Pool("127.0.0.1", port)
        pools.append(p)
        return p

    try:
        # Backends, one per region.
        backends: dict[str, tuple[int, Pool, Child]] = {}
        for i, region in enumerate(regions):
            port, admin = free_port(), free_port()
            b = sc.backend
            child = group.start(
                f"{tag}-backend-{region}",
                [
                    "-m", "loadtest.backend",
                    "--port", str(port), "--admin-port", str(admin), "--name", region,
                    "--workers", str(b.workers), "--service-time", str(b.service_time),
                    "--queue-limit", str(b.queue_limit), "--thrash", str(b.thrash),
                    "--jitter", str(b.jitter), "--seed", str(plan.seed * 100 + i),
                    "--max-lifetime", str(budget), "--parent-pid", str(os.getpid()),
                ],
            )  # fmt: skip
            backends[region] = (port, pool(admin), child)
        for _port, admin_pool, child in backends.values():
            await _wait_ready(child, admin_pool, "/ready")

        # Proxies, one per region, unless direct.
        targets: dict[str, str] = {}
        proxies: dict[str, tuple[Pool, Child]] = {}
        if plan.arm == "direct":
            for region, (port, _, _) in backends.items():
                targets[region] = f"http://127.0.0.1:{port}"
        else:
            protection = "on" if plan.arm == "sluice" else "off"
            base = plan.sluice_config or sluice_config_path(plan.scenario_file)
            token = secrets.token_hex(16)
            for region, (bport, _, _) in backends.items():
                lport, aport = free_port(), free_port()
                cfg = write_proxy_config(
                    base,
                    plan.out_dir / "configs" / f"{tag}-{region}.sluice.yaml",
                    port=lport,
                    upstream_port=bport,
                    admin_port=aport,
                    region=region,
                    protection=protection,
                )
                await check_proxy_config(cfg)
                child = group.start(
                    f"{tag}-sluice-{region}",
                    ["-m", "proxy", "--config", str(cfg)],
                    env={"SLUICE_ADMIN_TOKEN": token},
                )
                admin_pool = pool(aport)
                await _wait_ready(child, admin_pool, "/healthz")
                await _wait_port(child, lport)
                targets[region] = f"http://127.0.0.1:{lport}"
                proxies[region] = (admin_pool, child)

        # The schedule, then the fleet.
        now = time.monotonic()
        t_start = now + FLEET_STARTUP + lead
        t_trigger = t_start + t.warmup
        t_end = t_trigger + t.outage + t.observe
        c = sc.clients
        backlog = sc.traffic.backlog if sc.trigger == "reopen" else 0
        shards = fleet_processes(
            make_profile(c.profile).real_sdk,
            backlog,
            sum(sc.fresh_rate(r) for r in regions),
            c.fleet_processes,
        )
        spec = FleetSpec(
            seed=plan.seed,
            regions=regions,
            targets=targets,
            fresh_rate={r: sc.fresh_rate(r) for r in regions},
            callers=[(x.name, x.weight) for x in c.callers],
            profile=c.profile,
            timeout=c.timeout,
            t_start=t_start,
            t_end=t_end,
            backlog=backlog,
            backlog_region=sc.home,
            t_release=t_trigger if sc.trigger == "reopen" else None,
            prewarm=c.prewarm,
            failover=c.failover,
            naive_retries=c.naive_retries,
            naive_retry_delay=c.naive_retry_delay,
            hostile_retries=c.hostile_retries,
            hostile_rate_cap=c.hostile_rate_cap,
            retry_after_jitter=c.retry_after_jitter,
            grace=t.grace,
            csv_prefix=str(plan.out_dir / tag),
            identities_per_caller=c.identities_per_caller,
            shards=shards,
            t_backlog_spawn=backlog_spawn_at(sc, now + FLEET_STARTUP, t_trigger),
        )
        fleets: list[tuple[Child, Path]] = []
        for shard in range(shards):
            part = "" if shards == 1 else f"-{shard}"
            spec.shard = shard
            if shards > 1:
                spec.csv_prefix = str(plan.out_dir / f"{tag}{part}")
            spec_path = raw_dir / f"{tag}-fleet{part}-spec.json"
            fleet_out = raw_dir / f"{tag}-fleet{part}.json"
            spec_path.write_bytes(orjson.dumps(spec.__dict__))
            fleets.append(
                (
                    group.start(
                        f"{tag}-fleet{part}",
                        ["-m", "loadtest.fleet", str(spec_path), str(fleet_out)],
                    ),
                    fleet_out,
                )
            )

        # Until the end: CPU marks, the outage switch, /status samples, probes.
        measured = (
            [ch for ch, _ in fleets]
            + [ch for _, _, ch in backends.values()]
            + [ch for _, ch in proxies.values()]
        )
        samples: dict[str, list[tuple[float, dict[str, Any]]]] = {r: [] for r in proxies}
        step = sc.backend.capacity_step
        if step is not None:
            for _, admin_pool, _ in backends.values():
                await _post_admin(
                    admin_pool,
                    "/admin/workers",
                    {"workers": step.workers, "at": t_trigger + t.outage + step.at},
                )
        await _sleep_until(t_start)
        for ch in measured:
            ch.mark_cpu("start")
        own_start = _own_cpu()
        machine_start = machine_cpu()
        background = [
            asyncio.create_task(_sample_status(admin_pool, samples[region], t_end))
            for region, (admin_pool, _) in proxies.items()
        ]
        if sc.trigger == "outage":
            _, admin_pool, _ = backends[sc.home]
            probe_pool = pool(backends[sc.home][0])
            background.append(asyncio.create_task(_probe_after(probe_pool, t_trigger + t.outage)))
            await _sleep_until(t_trigger)
            await _post_admin(admin_pool, "/admin/outage", {"seconds": t.outage})
        try:
            while time.monotonic() < t_end:
                for fleet, _ in fleets:
                    if not fleet.alive():
                        raise ArmUnavailable(f"the fleet exited early:\n{fleet.log_tail()}")
                await asyncio.sleep(min(0.2, max(0.0, t_end - time.monotonic())))
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        for ch in measured:
            ch.mark_cpu("end")
        own_end = _own_cpu()
        machine_end = machine_cpu()
        span = time.monotonic() - t_start

        # Collect.
        outs: list[dict[str, Any]] = []
        for fleet, fleet_out in fleets:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(fleet.popen.wait, t.grace + 20.0)
            if fleet.alive() or not fleet_out.exists():
                raise ArmUnavailable(f"the fleet did not finish:\n{fleet.log_tail()}")
            outs.append(orjson.loads(fleet_out.read_bytes()))
        fleet_data = merge_outputs(outs)
        backend_stats: dict[str, dict[str, Any]] = {}
        for region, (_, admin_pool, _) in backends.items():
            doc = await _get_json(admin_pool, "/stats", timeout=10.0)
            if doc is None:
                raise ArmUnavailable(f"no stats from backend {region}")
            backend_stats[region] = doc
            (raw_dir / f"{tag}-backend-{region}.json").write_bytes(orjson.dumps(doc))
        for region, (admin_pool, _) in proxies.items():
            final = await _get_json(admin_pool, "/status", timeout=2.0)
            (raw_dir / f"{tag}-sluice-{region}-status.json").write_bytes(
                orjson.dumps({"samples": samples[region], "final": final})
            )

        cpu: dict[str, float] = {}
        for ch in measured:
            if "start" in ch.cpu_marks and "end" in ch.cpu_marks:
                label = ch.name.removeprefix(f"{tag}-")
                cpu[label] = (ch.cpu_marks["end"] - ch.cpu_marks["start"]) / span
        if own_start is not None and own_end is not None:
            cpu["harness"] = (own_end - own_start) / span
        busy_cores = (machine_end[0] - machine_start[0]) / span

        if sc.trigger == "reopen":
            t0 = fleet_data.get("t_release")
        else:
            t0 = backend_stats[sc.home].get("first_good_probe")
            outages = backend_stats[sc.home].get("outages") or []
            if outages:
                t_trigger = outages[0][0]  # when the switch really flipped
        return RunData(
            scenario=sc,
            arm=plan.arm,
            seed=plan.seed,
            capacity_scale=plan.capacity_scale,
            t_start=t_start,
            t_trigger=t_trigger,
            t_end=t_end,
            t0=t0,
            fleet=fleet_data,
            backends=backend_stats,
            proxy_samples=samples,
            cpu=cpu,
            machine_busy_cores=busy_cores,
            wall_s=time.monotonic() - wall0,
        )
    finally:
        for p in pools:
            p.close()
        group.stop_all()


async def _sample_status(
    admin_pool: Pool, out: list[tuple[float, dict[str, Any]]], until: float
) -> None:
    """Sample a proxy's /status every STATUS_EVERY seconds until `until`."""
    while time.monotonic() < until:
        doc = await _get_json(admin_pool, "/status", timeout=0.5)
        if doc is not None:
            out.append((time.monotonic(), doc))
        await asyncio.sleep(STATUS_EVERY)


async def _probe_after(probe_pool: Pool, outage_end: float) -> None:
    """Probe the backend's /healthz from just before the outage ends until it answers 200,
    so every arm (also `direct`, where nothing else probes) has a first good probe: t0."""
    await _sleep_until(outage_end - 0.3)
    while True:
        with contextlib.suppress(TimeoutError, ConnectError):
            resp = await probe_pool.request("GET", "/healthz", timeout=0.5)
            if resp.status == 200:
                return
        await asyncio.sleep(PROBE_EVERY)


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


async def _post_admin(admin_pool: Pool, path: str, doc: dict[str, Any]) -> None:
    """POST a JSON body to a backend's admin listener (the outage switch, a capacity step);
    raw request: the lean client has no body support."""
    body = orjson.dumps(doc)
    reader, writer = await asyncio.open_connection(admin_pool.host, admin_pool.port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\n".encode()
            + b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5.0)
        if b" 200 " not in status_line:
            raise ArmUnavailable(f"backend {path} refused: {status_line!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _own_cpu() -> float | None:
    t = os.times()
    return t.user + t.system


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def run_arm_sync(plan: ArmPlan) -> dict[str, Any]:
    """Run one arm and analyse it; an arm that cannot run yields {"unavailable": reason}."""
    try:
        data = asyncio.run(run_arm(plan))
    except ArmUnavailable as exc:
        return {"scenario": plan.scenario.name, "arm": plan.arm, "unavailable": str(exc)}
    return analyze(data)
