"""The simulated token backend and the fleet's lean HTTP client, on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from loadtest.backend import BackendConfig, Simulator, build_apps
from loadtest.httpclient import ConnectError, Pool
from loadtest.procs import free_port

TOKEN = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r&client_id=c1"


async def _serve(sim: Simulator) -> tuple[list[web.AppRunner], int]:
    main_app, _admin = build_apps(sim)
    runner = web.AppRunner(main_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return [runner], int(runner.addresses[0][1])


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Simulator, Pool]]:
    params: dict[str, Any] = getattr(request, "param", {})
    sim = Simulator(BackendConfig(jitter=0.0, **params))
    runners, port = await _serve(sim)
    pool = Pool("127.0.0.1", port)
    yield sim, pool
    pool.close()
    for r in runners:
        await r.cleanup()


@pytest.mark.parametrize(
    "backend", [{"workers": 2, "service_time": 0.1, "queue_limit": 2, "thrash": 0.0}], indirect=True
)
async def test_workers_then_queue_then_fast_503(backend: tuple[Simulator, Pool]) -> None:
    sim, pool = backend
    results = await asyncio.gather(
        *(pool.request("GET", TOKEN, [("x-request-id", f"r{i}")], 2.0, True) for i in range(6))
    )
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 200, 200, 503, 503]
    refused = [r for r in results if r.status == 503]
    assert all(r.headers["x-backend-reason"] == "queue-full" for r in refused)
    ok = next(r for r in results if r.status == 200)
    body = orjson.loads(ok.body)
    assert body["token_type"] == "Bearer" and body["client_id"] == "c1"
    assert len(body["access_token"]) > 1000 and body["expires_in"] == "86399"
    assert sim.peak_busy == 2 and sim.peak_queue == 2
    assert sim.counts["completed"] == 4 and sim.counts["rejected_full"] == 2
    sim.sample()
    light = sim.stats(raw=False)
    assert "completions" not in light
    tl = light["timeline"]
    assert sum(tl["arrivals"]) == 6 and sum(tl["served"]) == 4 and sum(tl["refused"]) == 2
    assert len(tl["t"]) == len(tl["queue"]) >= 1


@pytest.mark.parametrize("backend", [{"workers": 1, "service_time": 0.15}], indirect=True)
async def test_work_continues_after_the_client_left(backend: tuple[Simulator, Pool]) -> None:
    sim, pool = backend
    with pytest.raises(TimeoutError):
        await pool.request("GET", TOKEN, [("x-request-id", "gone.0")], timeout=0.03)
    await asyncio.sleep(0.25)
    assert sim.counts["completed"] == 1
    assert sim.counts["wasted"] == 1
    assert sim.completions[0][1:] == ("gone.0", 0, 1)


@pytest.mark.parametrize("backend", [{"workers": 1, "service_time": 0.01}], indirect=True)
async def test_outage_is_a_fast_500_then_the_first_good_probe_is_noted(
    backend: tuple[Simulator, Pool],
) -> None:
    sim, pool = backend
    sim.set_outage(0.2)
    resp = await pool.request("GET", TOKEN, timeout=1.0)
    assert resp.status == 500 and resp.headers["x-backend-reason"] == "outage"
    assert (await pool.request("GET", "/healthz", timeout=1.0)).status == 500
    assert sim.first_good_probe is None
    await asyncio.sleep(0.25)
    assert (await pool.request("GET", "/healthz", timeout=1.0)).status == 200
    assert sim.first_good_probe is not None
    assert (await pool.request("GET", TOKEN, timeout=1.0)).status == 200


@pytest.mark.parametrize(
    "backend", [{"workers": 1, "service_time": 0.05, "thrash": 1.0}], indirect=True
)
async def test_thrash_slows_service_with_the_queue(backend: tuple[Simulator, Pool]) -> None:
    _, pool = backend
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(pool.request("GET", TOKEN, timeout=5.0) for _ in range(4)))
    # The first starts on an empty queue (0.05 s); the next three find 2, 1 and 0 waiting
    # behind them: 0.05 x (1 + q) = 0.15 + 0.10 + 0.05. Without thrash it would be 0.2 s.
    assert loop.time() - t0 == pytest.approx(0.35, abs=0.06)


async def test_pool_reuses_connections_and_reports_refusals(
    backend: tuple[Simulator, Pool],
) -> None:
    _, pool = backend
    for _ in range(3):
        assert (await pool.request("GET", TOKEN, timeout=1.0)).status == 200
    assert pool.opened == 1
    await pool.prewarm(3)
    assert pool.open_connections == 4
    dead = Pool("127.0.0.1", free_port())
    with pytest.raises(ConnectError):
        await dead.request("GET", "/", timeout=1.0)
    dead.close()


async def test_queued_work_starts_when_a_worker_came_free_not_when_its_timer_ran() -> None:
    # The simulator's capacity is workers / service_time: a completion timer that fires late
    # (our own loop busy) must not delay the next queued job, or C shrinks under load.
    sim = Simulator(BackendConfig(workers=1, service_time=0.02, jitter=0.0, thrash=0.0))
    begin = sim.clock()
    futures = [sim.admit(False) for _ in range(4)]
    queued = list(sim.queue)
    assert len(queued) == 3
    loop = asyncio.get_running_loop()
    loop.call_later(0.005, time.sleep, 0.03)  # stall across the first job's end
    done = await asyncio.gather(*(f for f in futures if not isinstance(f, str)))
    assert len(done) == 4
    dues = [j.due - begin for j in queued]
    assert dues == pytest.approx([0.04, 0.06, 0.08], abs=0.004)
