"""The fleet's shared state in a run (issue 18, `--fleet-redis`): a real `redis-server` started
by the harness like every other child (from PATH, a free loopback port, nothing persisted,
under coreutils `timeout` for its lifetime bound, stopped by process group), the `fleet:`
section each sidecar gets, and the Redis-fault run (`--redis-kill-at S`: SIGKILL S seconds
after the trigger, the same port restarted `--redis-restart-after` seconds later).

While Redis is down the harness also scrapes each sidecar's `sluice_fleet_redis_up` gauge
(/metrics every METRICS_EVERY s around the fault), so the run shows the gauge itself going 0
and back to 1, not only /status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from .arm_children import require_executable, sleep_until, wait_accepting
from .arm_fleet import TIMEOUT_KILL_AFTER, scrape_metrics
from .httpclient import Pool
from .procs import Child, ProcessGroup, free_port

REDIS_SERVER = "redis-server"
REDIS_MISSING = (
    "redis-server is not on PATH: --fleet-redis runs a real Redis for the sidecars' shared "
    "state (Debian: apt-get install redis-server)"
)
FLEET_SERVICE = "loadtest"  # fleet.service of every sidecar of one run (part of every key)
METRICS_EVERY = 0.5  # s between /metrics scrapes of each sidecar around a Redis fault
METRICS_AROUND = (1.0, 6.0)  # s scraped before the kill and after the restart
_UP = re.compile(r"^sluice_fleet_redis_up\s+(\S+)$", re.MULTILINE)


class RedisPlan(NamedTuple):
    """Whether a fleet arm shares state on Redis, and the fault to inject (None: none)."""

    shared: bool = False
    kill_at: float | None = None  # s after the trigger (the release in reopen)
    restart_after: float = 5.0

    def check(self, fleet: bool) -> str | None:
        """Why this plan cannot run (None when it can): a fault needs shared state, shared
        state needs a fleet (--fleet K --lb), times must be positive, redis-server on PATH."""
        if self.kill_at is not None and not self.shared:
            return "--redis-kill-at needs --fleet-redis"
        if self.shared and not fleet:
            return "--fleet-redis needs a fleet behind a balancer (--fleet K --lb ALGO)"
        if self.kill_at is not None and (self.kill_at < 0 or self.restart_after <= 0):
            return "--redis-kill-at must be ≥ 0 and --redis-restart-after > 0"
        if self.shared and shutil.which(REDIS_SERVER) is None:
            return REDIS_MISSING
        return None


class RedisChild(NamedTuple):
    """A running redis-server: its port on 127.0.0.1 and its child (`timeout` around it)."""

    port: int
    child: Child

    @property
    def url(self) -> str:
        """The URL every sidecar's `fleet.redis` names."""
        return redis_url(self.port)


def redis_url(port: int) -> str:
    """`redis://127.0.0.1:<port>/0`."""
    return f"redis://127.0.0.1:{port}/0"


def redis_argv(exe: str, port: int, workdir: Path, budget: float) -> list[str]:
    """redis-server on 127.0.0.1:`port` persisting nothing (no RDB, no AOF, `workdir` its
    dir), in the foreground under coreutils `timeout` so it lives at most `budget` s."""
    return [
        "timeout", "-k", f"{TIMEOUT_KILL_AFTER:g}", f"{budget:.0f}", exe,
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--dir", str(workdir),
    ]  # fmt: skip


def fleet_section(url: str, instance: str) -> dict[str, Any]:
    """A sidecar's `fleet:` section: the run's Redis, the run's service, its own name."""
    return {"redis": url, "service": FLEET_SERVICE, "instance": instance}


def sidecar_overrides(names: Iterable[str], url: str) -> dict[str, dict[str, Any]]:
    """Each sidecar's own config sections: its `fleet:` (the run's Redis, its name)."""
    return {name: {"fleet": fleet_section(url, name)} for name in names}


def redis_exe() -> str:
    """redis-server's executable; ArmUnavailable naming the package when it is missing."""
    return require_executable(REDIS_SERVER, REDIS_MISSING)


async def start_redis(
    group: ProcessGroup, name: str, workdir: Path, budget: float, port: int | None = None
) -> RedisChild:
    """A redis-server (on `port`, else a free one), accepting connections."""
    exe = redis_exe()
    port = port or free_port()
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    child = group.start_argv(name, redis_argv(exe, port, workdir, budget))
    child.cpu_tree = True  # `timeout` is the child; redis-server runs below it
    await wait_accepting(child, port)
    return RedisChild(port, child)


def kill_redis(redis: RedisChild) -> None:
    """SIGKILL its process group: redis-server vanishes mid-conversation, as in a crash."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(redis.child.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        redis.child.popen.wait(5.0)


async def redis_fault(
    group: ProcessGroup,
    redis: RedisChild,
    plan: RedisPlan,
    t_trigger: float,
    workdir: Path,
    budget_until: float,
    events: list[tuple[str, float]],
) -> None:
    """The fault of `plan`: SIGKILL at t_trigger + kill_at, the same port restarted
    restart_after s later; its events appended to `events` as they happen ("kill",
    "restart": started, "accepting": answering again)."""
    assert plan.kill_at is not None
    await sleep_until(t_trigger + plan.kill_at)
    t_kill = time.monotonic()
    kill_redis(redis)
    events.append(("kill", t_kill))
    await sleep_until(t_kill + plan.restart_after)
    events.append(("restart", time.monotonic()))
    budget = max(10.0, budget_until - time.monotonic())
    await start_redis(group, f"{redis.child.name}-restarted", workdir, budget, redis.port)
    events.append(("accepting", time.monotonic()))


async def scrape_redis_up(
    admin: Pool, lo: float, hi: float, out: list[tuple[float, float | None]]
) -> None:
    """`sluice_fleet_redis_up` of one sidecar every METRICS_EVERY s from `lo` to `hi` into
    `out` as (t, value; None when /metrics did not answer or had no such gauge)."""
    await sleep_until(lo)
    while time.monotonic() < hi:
        text = await scrape_metrics(admin)
        m = _UP.search(text) if text is not None else None
        out.append((time.monotonic(), float(m.group(1)) if m else None))
        await asyncio.sleep(METRICS_EVERY)
