"""The children of one arm, started and spoken to: the simulated backends, the Sluice proxies
(config written and checked first) and the fleet processes; readiness, admin calls, /status
samples and the harness's own health probes. loadtest.runner puts them on a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import yaml

from .fleet_spec import FleetSpec
from .httpclient import ConnectError, Pool
from .procs import Child, ProcessGroup, free_port, write_sluice_config
from .scenario import Scenario

STATUS_EVERY = 0.25  # s between /status samples of each proxy
PROBE_EVERY = 0.1  # s between the harness's own backend health probes after an outage
READY_TIMEOUT = 15.0


class ArmUnavailable(Exception):
    """An arm could not run (e.g. the proxy did not start); the message says why."""


def require_executable(name: str, missing: str) -> str:
    """`name`'s path on PATH; ArmUnavailable(`missing`, naming its package) when it is not."""
    path = shutil.which(name)
    if path is None:
        raise ArmUnavailable(missing)
    return path


class Backend(NamedTuple):
    """A simulated backend (of a region, or a fleet's member): its port, a pool on its admin
    listener, the child, and its workers after the scenario's capacity step (None: the step's
    own; a fleet member has its share)."""

    port: int
    admin: Pool
    child: Child
    workers: int = 0
    step_workers: int | None = None


class Proxy(NamedTuple):
    """A Sluice of one region: its port, a pool on its admin listener, the child."""

    port: int
    admin: Pool
    child: Child


PoolFor = Callable[[int], Pool]  # a keep-alive pool to 127.0.0.1:port, closed with the arm


async def start_backends(
    group: ProcessGroup, sc: Scenario, tag: str, seed: int, budget: float, pool: PoolFor
) -> dict[str, Backend]:
    """One backend per region (seeded apart, living at most `budget` s), each ready."""
    backends: dict[str, Backend] = {}
    for i, region in enumerate(sc.regions):
        b = sc.backend
        spec = BackendArgs(region, b.workers, b.queue_limit, seed * 100 + i)
        backends[region] = launch_backend(group, sc, tag, spec, budget, pool)
    for backend in backends.values():
        await wait_ready(backend.child, backend.admin, "/ready")
    return backends


class BackendArgs(NamedTuple):
    """What differs between the backends of one arm: name, workers, queue limit, seed."""

    name: str
    workers: int
    queue_limit: int
    seed: int


def launch_backend(
    group: ProcessGroup, sc: Scenario, tag: str, spec: BackendArgs, budget: float, pool: PoolFor
) -> Backend:
    """Start one backend: the scenario's service time, thrash and jitter with `spec`'s
    workers, queue limit and seed, living at most `budget` s (not waited for)."""
    port, admin = free_port(), free_port()
    b = sc.backend
    child = group.start(
        f"{tag}-backend-{spec.name}",
        [
            "-m", "loadtest.backend",
            "--port", str(port), "--admin-port", str(admin), "--name", spec.name,
            "--workers", str(spec.workers), "--service-time", str(b.service_time),
            "--queue-limit", str(spec.queue_limit), "--thrash", str(b.thrash),
            "--jitter", str(b.jitter), "--seed", str(spec.seed),
            "--max-lifetime", str(budget), "--parent-pid", str(os.getpid()),
        ],
    )  # fmt: skip
    return Backend(port, pool(admin), child, spec.workers)


async def start_proxies(
    group: ProcessGroup,
    tag: str,
    protection: str,
    base_config: Path,
    configs_dir: Path,
    backends: dict[str, Backend],
    pool: PoolFor,
    region_of: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    own: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> dict[str, Proxy]:
    """One Sluice in front of each backend, named as it is (`base_config` with this run's
    ports, region (`region_of[name]`, default the name) and protection, then `overrides`,
    then its `own[name]` sections (a fleet sidecar's `fleet:`); each checked first), all
    started together, each ready and accepting."""
    token = secrets.token_hex(16)
    ports: dict[str, tuple[int, int, Path]] = {}
    for name, backend in backends.items():
        lport, aport = free_port(), free_port()
        cfg = write_proxy_config(
            base_config,
            configs_dir / f"{tag}-{name}.sluice.yaml",
            port=lport,
            upstream_port=backend.port,
            admin_port=aport,
            region=(region_of or {}).get(name, name),
            protection=protection,
            overrides={**(overrides or {}), **(own or {}).get(name, {})},
        )
        ports[name] = (lport, aport, cfg)
    await asyncio.gather(*(check_proxy_config(cfg) for _, _, cfg in ports.values()))
    proxies: dict[str, Proxy] = {}
    for name, (lport, aport, cfg) in ports.items():
        child = group.start(
            f"{tag}-sluice-{name}",
            ["-m", "proxy", "--config", str(cfg)],
            env={"SLUICE_ADMIN_TOKEN": token},
        )
        proxies[name] = Proxy(lport, pool(aport), child)
    for proxy in proxies.values():
        await wait_ready(proxy.child, proxy.admin, "/healthz")
        await wait_accepting(proxy.child, proxy.port)
    return proxies


def start_fleets(
    group: ProcessGroup, spec: FleetSpec, tag: str, out_dir: Path, raw_dir: Path
) -> list[tuple[Child, Path]]:
    """The fleet's processes (`spec.shards` of them), each given its spec as a file; each with
    the file it writes its records to."""
    fleets: list[tuple[Child, Path]] = []
    for shard in range(spec.shards):
        part = "" if spec.shards == 1 else f"-{shard}"
        spec.shard = shard
        if spec.shards > 1:
            spec.csv_prefix = str(out_dir / f"{tag}{part}")
        spec_path = raw_dir / f"{tag}-fleet{part}-spec.json"
        fleet_out = raw_dir / f"{tag}-fleet{part}.json"
        spec_path.write_bytes(orjson.dumps(spec.__dict__))
        child = group.start(
            f"{tag}-fleet{part}", ["-m", "loadtest.fleet", str(spec_path), str(fleet_out)]
        )
        fleets.append((child, fleet_out))
    return fleets


async def get_json(pool: Pool, path: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET `path`: its JSON object, or None (no answer, not 200, not a JSON object)."""
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


async def wait_ready(child: Child, pool: Pool, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Until `path` answers with a JSON object; ArmUnavailable if `child` exits or not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise ArmUnavailable(f"{child.name} exited early:\n{child.log_tail()}")
        if await get_json(pool, path, timeout=0.5) is not None:
            return
        await asyncio.sleep(0.05)
    raise ArmUnavailable(f"{child.name} not ready after {timeout:.0f} s:\n{child.log_tail()}")


async def wait_accepting(child: Child, port: int, timeout: float = READY_TIMEOUT) -> None:
    """Until `child` accepts on `port`; ArmUnavailable if it exits or not in time."""
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
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """The scenario's Sluice config with this run's ports, region and protection filled in
    (and `overrides`' sections merged last)."""
    return write_sluice_config(
        dest,
        port=port,
        upstream_port=upstream_port,
        admin_port=admin_port,
        base=yaml.safe_load(base_file.read_text(encoding="utf-8")) or {},
        overrides={
            "region": {"name": region},
            "modes": {"protection": protection},
            **(overrides or {}),
        },
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
    """The interpreter that runs `proxy check-config` (this one)."""
    return [sys.executable]


async def sample_status(
    admin_pool: Pool, out: list[tuple[float, dict[str, Any]]], until: float
) -> None:
    """Sample a proxy's /status every STATUS_EVERY seconds until `until`."""
    while time.monotonic() < until:
        doc = await get_json(admin_pool, "/status", timeout=0.5)
        if doc is not None:
            out.append((time.monotonic(), doc))
        await asyncio.sleep(STATUS_EVERY)


async def probe_after(probe_pool: Pool, outage_end: float) -> None:
    """Probe the backend's /healthz from just before the outage ends until it answers 200,
    so every arm (also `direct`, where nothing else probes) has a first good probe: t0."""
    await sleep_until(outage_end - 0.3)
    while True:
        with contextlib.suppress(TimeoutError, ConnectError):
            resp = await probe_pool.request("GET", "/healthz", timeout=0.5)
            if resp.status == 200:
                return
        await asyncio.sleep(PROBE_EVERY)


async def post_admin(admin_pool: Pool, path: str, doc: dict[str, Any]) -> None:
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


async def sleep_until(t: float) -> None:
    """Sleep until the monotonic instant `t` (not at all if it is past)."""
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
