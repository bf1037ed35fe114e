"""A fleet of sidecars sharing a real redis-server (tests/redis_server.py): a return booked by
one sidecar is solicited at another, a retry seen by one is a retry at another; Redis killed,
paused or restarted never fails a request, and the link rejoins by itself; standalone, no link
runs and no Redis client is loaded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.edge.lifecycle import Server
from tests.redis_server import RedisServer
from tests.support import (
    ROOT,
    SluiceProcess,
    get_json,
    process_config,
    running_backend,
    running_sluice,
    sluice_config,
    wait_for,
)

VM = {"x-caller-id": "vm"}


def fleet_sections(redis: RedisServer, instance: str) -> dict[str, Any]:
    """A sidecar of the test fleet: caller `vm` capped at 1 (a second request at once is
    refused `caller-cap` with a booked return), answers not held, a wide slot grace (the
    return is sent when the peer has the booking, however slow the machine)."""
    return {
        "fleet": {"redis": redis.url, "service": "test", "instance": instance},
        "callers": {"known": [{"name": "vm", "cap": 1}]},
        "shedding": {"hold_max": "0s", "slot_grace": "20s", "retry_after_min": "100ms"},
    }


async def status(session: aiohttp.ClientSession, admin_port: int) -> Any:
    return await get_json(session, f"http://127.0.0.1:{admin_port}/status")


async def metric(session: aiohttp.ClientSession, admin_port: int, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not served")


@contextlib.asynccontextmanager
async def two_sidecars(
    redis: RedisServer, backend_url: str, tmp: Path
) -> AsyncIterator[tuple[SluiceProcess, SluiceProcess]]:
    procs = []
    for name in ("a", "b"):
        p = SluiceProcess(
            tmp / f"{name}.yaml", process_config(backend_url, **fleet_sections(redis, name))
        )
        procs.append(p)
    try:
        for p in procs:
            p.start()
        yield procs[0], procs[1]
    finally:
        for p in procs:
            p.stop()


async def test_a_return_booked_at_one_sidecar_is_solicited_at_another(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        running_backend() as backend,
        two_sidecars(redis_server, backend.url, tmp_path) as (a, b),
        aiohttp.ClientSession() as s,
    ):
        for p in (a, b):  # both linked, each seeing the other
            await wait_for_status(s, p, lambda st: len(st["fleet"]["peers"]) == 1)
        # Caller vm holds its one slot at A; its next request is refused with a booked return.
        held = asyncio.create_task(s.get(f"http://127.0.0.1:{a.port}/hold", headers=VM))
        await wait_for_status(s, a, lambda st: st["in_flight"] == 1)
        async with s.get(f"http://127.0.0.1:{a.port}/echo/token", headers=VM) as r:
            assert r.status == 429 and r.headers["x-sluice-reason"] == "caller-cap"
            assert int(r.headers["retry-after-ms"]) > 0
        # B learns of the booking through Redis; the client comes back through B.
        await wait_for_status(s, b, lambda st: st["fleet"]["slots"]["foreign"] == 1)
        async with s.get(f"http://127.0.0.1:{b.port}/echo/token", headers=VM) as r:
            assert r.status == 200
        st = await status(s, b.admin_port)
        assert st["slots"]["redeemed"] == 1 and st["fleet"]["slots"]["redeemed_foreign"] == 1
        assert await metric(s, b.admin_port, "sluice_retry_slots_redeemed_total") == 1
        # The fleet's counters follow at the next exchange.
        await wait_for_metric(s, b, "sluice_fleet_slots_redeemed_foreign_total", 1)
        assert await metric(s, b.admin_port, "sluice_retries_recognised_total") == 0
        # The redemption closes the booking at A too.
        await wait_for_status(s, a, lambda st: st["fleet"]["slots"]["closed_by_peers"] == 1)
        assert (await status(s, a.admin_port))["slots"]["booked"] == 0
        backend.release_slow.set()
        (await held).release()


async def test_a_retry_seen_at_one_sidecar_is_a_retry_at_another(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    call = {"x-ms-client-request-id": "c7d1b0e2-call"}
    async with (
        running_backend() as backend,
        two_sidecars(redis_server, backend.url, tmp_path) as (a, b),
        aiohttp.ClientSession() as s,
    ):
        async with s.get(f"http://127.0.0.1:{a.port}/echo/token", headers=call) as r:
            assert r.status == 200
        await wait_for_status(s, b, lambda st: st["fleet"]["received"]["call-id"] == 1)
        assert await metric(s, b.admin_port, "sluice_retries_recognised_total") == 0
        async with s.get(f"http://127.0.0.1:{b.port}/echo/token", headers=call) as r:
            assert r.status == 200
        retries = 'sluice_retries_recognised_total{signal="call-id"}'
        assert await metric(s, b.admin_port, retries) == 1
        assert await metric(s, a.admin_port, retries) == 0


async def wait_for_metric(
    session: aiohttp.ClientSession, proc: SluiceProcess, name: str, value: float
) -> None:
    for _ in range(400):
        if await metric(session, proc.admin_port, name) == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never read {value}")


async def wait_for_status(session: aiohttp.ClientSession, proc: SluiceProcess, check: Any) -> None:
    for _ in range(400):
        if check(await status(session, proc.admin_port)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"status never matched:\n{proc.log()[-2000:]}")


# --- Redis failing ----------------------------------------------------------------------------
class Traffic:
    """Requests one after another through Sluice, every answer kept, until stopped."""

    def __init__(self, server: Server) -> None:
        self.url = f"http://127.0.0.1:{server.proxy_port}/echo/x"
        self.statuses: list[int] = []
        self.stopped = False

    async def run(self, session: aiohttp.ClientSession) -> None:
        while not self.stopped:
            async with session.get(self.url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
                self.statuses.append(r.status)

    def answers_after(self, n: int, more: int = 20) -> Any:
        return lambda: len(self.statuses) >= n + more


def link_lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == "sluice.fleet" and text in r.getMessage())


async def test_redis_killed_and_restarted_while_requests_flow(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.fleet")
    async with running_backend() as backend:
        config = sluice_config(backend.url, fleet={"redis": redis_server.url, "instance": "x"})
        async with running_sluice(config) as server, aiohttp.ClientSession() as s:
            registry = server.sluice.metrics.registry

            def up() -> float | None:
                return registry.get_sample_value("sluice_fleet_redis_up")

            await wait_for(lambda: up() == 1)
            traffic = Traffic(server)
            task = asyncio.create_task(traffic.run(s))
            await wait_for(traffic.answers_after(0))
            redis_server.kill()
            await wait_for(lambda: up() == 0)
            down_at = len(traffic.statuses)
            await wait_for(traffic.answers_after(down_at))  # answers keep coming without Redis
            redis_server.start()  # the same port
            await wait_for(lambda: up() == 1)
            up_at = len(traffic.statuses)
            await wait_for(traffic.answers_after(up_at))
            traffic.stopped = True
            await task
            st = server.sluice.status()["fleet"]
    assert set(traffic.statuses) == {200}, "a request failed because Redis did"
    assert link_lines(caplog, "fleet link down") == 1
    assert link_lines(caplog, "fleet link up") == 2  # joined, then rejoined
    assert st["redis_up"] and st["exchanges"]["failed"] >= 1


async def test_a_redis_that_stops_answering_delays_no_request(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.fleet")
    async with running_backend() as backend:
        config = sluice_config(backend.url, fleet={"redis": redis_server.url})
        async with running_sluice(config) as server, aiohttp.ClientSession() as s:
            link = server.sluice.fleet
            assert link is not None
            await wait_for(lambda: link.up)
            traffic = Traffic(server)
            task = asyncio.create_task(traffic.run(s))
            redis_server.pause()  # connections stay open; nothing is answered
            try:
                await wait_for(lambda: not link.up)
                assert "timed out" in link.last_error
                await wait_for(traffic.answers_after(len(traffic.statuses)))
            finally:
                redis_server.resume()
            await wait_for(lambda: link.up)
            traffic.stopped = True
            await task
    assert set(traffic.statuses) == {200}
    assert link_lines(caplog, "fleet link down") == 1


async def test_standalone_runs_no_link() -> None:
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url)) as server,
    ):
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert server.sluice.fleet is None and "sluice-fleet-link" not in names
        assert "fleet" not in server.sluice.status()
        assert server.sluice.metrics.fleet is None


def test_standalone_loads_no_redis_client() -> None:
    code = (
        "import sys, proxy.edge.lifecycle, proxy.edge.cli; "
        "assert 'redis' not in sys.modules and 'proxy.fleet.link' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
