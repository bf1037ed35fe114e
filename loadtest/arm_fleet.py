"""The children of a fleet arm (issue 18, `--fleet K --lb …`): K backends sharing the storm
region's capacity (loadtest.balancer's split), a Sluice sidecar in front of each (believing
forwarding headers from the balancer alone) in the proxy arms, and HAProxy in front of them all:
of the sidecars, or of the backends themselves in the `direct` arm. Also what a sidecar tells at
the end of the run: its /metrics.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

from .arm_children import (
    ArmUnavailable,
    Backend,
    BackendArgs,
    PoolFor,
    Proxy,
    launch_backend,
    require_executable,
    wait_accepting,
    wait_ready,
)
from .balancer import (
    HAPROXY,
    HAPROXY_MISSING,
    Server,
    haproxy_config,
    haproxy_timeout,
    member_names,
    split_evenly,
)
from .httpclient import ConnectError, Pool
from .procs import Child, ProcessGroup, free_port
from .scenario import Scenario

TIMEOUT_KILL_AFTER = 5.0  # s: coreutils `timeout` sends SIGKILL this long after its SIGTERM


class Front(NamedTuple):
    """The balancer: its port on 127.0.0.1 and its child."""

    port: int
    child: Child


def haproxy_path() -> str:
    """HAProxy's executable; ArmUnavailable naming the package when it is not on PATH."""
    return require_executable(HAPROXY, HAPROXY_MISSING)


async def start_members(
    group: ProcessGroup, sc: Scenario, tag: str, seed: int, budget: float, pool: PoolFor, k: int
) -> dict[str, Backend]:
    """The storm region's K backends, named by `member_names`, each with its share of the
    workers and of the queue limit (and of a capacity step), seeded apart, each ready."""
    b = sc.backend
    try:
        workers = split_evenly(b.workers, k)
        queue_limits = split_evenly(max(b.queue_limit, k), k)
        step = b.capacity_step
        steps = split_evenly(max(step.workers, k), k) if step is not None else [None] * k
    except ValueError as exc:
        raise ArmUnavailable(f"--fleet {k}: {exc}") from None
    backends: dict[str, Backend] = {}
    for i, name in enumerate(member_names(sc.home, k)):
        spec = BackendArgs(name, workers[i], queue_limits[i], seed * 100 + i)
        backend = launch_backend(group, sc, tag, spec, budget, pool)
        backends[name] = backend._replace(step_workers=steps[i])
    for backend in backends.values():
        await wait_ready(backend.child, backend.admin, "/ready")
    return backends


async def start_front(
    group: ProcessGroup,
    tag: str,
    configs_dir: Path,
    servers: list[Server],
    balance: str,
    client_timeout: float,
    budget: float,
) -> Front:
    """HAProxy in front of `servers` (config written to `configs_dir`), accepting. It runs
    under coreutils `timeout`, so it lives at most `budget` s like every child of the arm; the
    group (own session, parent-death signal, stopped by process group) is procs.py's."""
    exe = haproxy_path()
    port = free_port()
    cfg = configs_dir / f"{tag}-haproxy.cfg"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(haproxy_config(port, servers, balance, haproxy_timeout(client_timeout)))
    check = group.start_argv(f"{tag}-haproxy-check", [exe, "-c", "-q", "-f", str(cfg)])
    if await asyncio.to_thread(check.popen.wait, 30.0) != 0:
        raise ArmUnavailable(f"haproxy rejected {cfg}:\n{check.log_tail()}")
    argv = ["timeout", "-k", f"{TIMEOUT_KILL_AFTER:g}", f"{budget:.0f}", exe, "-db", "-f", str(cfg)]
    child = group.start_argv(f"{tag}-haproxy", argv)
    child.cpu_tree = True  # `timeout` is the child; HAProxy runs below it
    await wait_accepting(child, port)
    return Front(port, child)


def servers_of(backends: dict[str, Backend], proxies: dict[str, Proxy]) -> list[Server]:
    """What the balancer fronts: each member's sidecar when there are sidecars, else the
    member's backend; weighted by the member's workers."""
    return [
        Server(name, proxies[name].port if proxies else backend.port, backend.workers)
        for name, backend in backends.items()
    ]


async def scrape_metrics(admin: Pool) -> str | None:
    """A sidecar's /metrics text (None when it does not answer)."""
    try:
        resp = await admin.request("GET", "/metrics", timeout=5.0, keep_body=True)
    except (TimeoutError, ConnectError):
        return None
    return resp.body.decode(errors="replace") if resp.status == 200 else None
