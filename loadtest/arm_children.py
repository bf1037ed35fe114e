"""The children of one arm, started and spoken to: the simulated backends, the Sluice proxies
(config written and checked first) and the fleet processes; readiness, admin calls, /status
samples and the harness's own health probes. loadtest.runner puts them on a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable
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


class Backend(NamedTuple):
    """A simulated backend of one region: its port, a pool on its admin listener, the child."""

    port: int
    admin: Pool
    child: Child


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
        port, admin = free_port(), free_port()
        b = sc.backend
        child = group.start(
            f"{tag}-backend-{region}",
            [
                "-m", "loadtest.backend",
                "--port", str(port), "--admin-port", str(admin), "--name", region,
                "--workers", str(b.workers), "--service-time", str(b.service_time),
                "--queue-limit", str(b.queue_limit), "--thrash", str(b.thrash),
                "--jitter", str(b.jitter), "--seed", str(seed * 100 + i),
                "--max-lifetime", str(budget), "--parent-pid", str(os.getpid()),
            ],
        )  # fmt: skip
        backends[region] = Backend(port, pool(admin), child)
    for backend in backends.values():
        await wait_ready(backend.child, backend.admin, "/ready")
    return backends


async def start_proxies(
    group: ProcessGroup,
    tag: str,
    protection: str,
    base_config: Path,
    configs_dir: Path,
    backends: dict[str, Backend],
    pool: PoolFor,
) -> dict[str, Proxy]:
    """One Sluice per region in front of its backend (`base_config` with this run's ports,
    region and protection, checked first), each ready and accepting."""
    token = secrets.token_hex(16)
    proxies: dict[str, Proxy] = {}
    for region, backend in backends.items():
        lport, aport = free_port(), free_port()
        cfg = write_proxy_config(
            base_config,
            configs_dir / f"{tag}-{region}.sluice.yaml",
            port=lport,
            upstream_port=backend.port,
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
        await wait_ready(child, admin_pool, "/healthz")
        await wait_accepting(child, lport)
        proxies[region] = Proxy(lport, admin_pool, child)
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
