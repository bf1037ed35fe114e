"""The simulated token backend and the fleet's lean HTTP client, on loopback.

No test here reads the clock: the simulator runs on a fake clock where the test needs a time
(an outage's end, a job's due time), and its completion timers are held where the test needs
work to wait (`HeldWork`). How its service times come out in wall time is printed by
`python -m loadtest.bench_timing`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from loadtest.backend_http import build_apps
from loadtest.backend_sim import BackendConfig, Simulator
from loadtest.httpclient import ConnectError, Pool
from loadtest.procs import free_port
from tests.support import wait_for

TOKEN = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r&client_id=c1"


class FakeClock:
    """The simulator's clock, moved by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HeldWork:
    """Holds the simulator's completions: a job whose service time ran out waits in `held`
    until `release()`, after which jobs complete as their timers fire."""

    def __init__(self, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
        self._finish = sim.finish
        self.held: list[Any] = []
        self.open = False
        monkeypatch.setattr(sim, "finish", self._hold)

    def _hold(self, job: Any) -> None:
        if self.open:
            self._finish(job)
        else:
            self.held.append(job)

    def release(self) -> None:
        self.open = True
        held, self.held = self.held, []
        for job in held:
            self._finish(job)


async def _serve(sim: Simulator) -> tuple[web.AppRunner, int]:
    main_app, _admin = build_apps(sim)
    runner = web.AppRunner(main_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


@pytest.fixture
async def backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Simulator, Pool, web.AppRunner]]:
    params: dict[str, Any] = dict(getattr(request, "param", {}))
    fake_clock = params.pop("fake_clock", False)  # a FakeClock at 100.0 instead of monotonic
    config = BackendConfig(jitter=0.0, **params)
    sim = Simulator(config, clock=FakeClock(100.0)) if fake_clock else Simulator(config)
    runner, port = await _serve(sim)
    pool = Pool("127.0.0.1", port)
    yield sim, pool, runner
    pool.close()
    await runner.cleanup()


@pytest.fixture
async def held(
    backend: tuple[Simulator, Pool, web.AppRunner], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[HeldWork]:
    """The backend's completions, held until the test releases them (or at teardown, so the
    server's handlers can end)."""
    work = HeldWork(backend[0], monkeypatch)
    yield work
    work.release()


def client_left(runner: web.AppRunner) -> bool:
    """The server has seen every client connection close."""
    assert runner.server is not None
    return not any(handler.connected for handler in runner.server.connections)


@pytest.mark.parametrize(
    "backend",
    [{"workers": 2, "service_time": 0.01, "queue_limit": 2, "thrash": 0.0}],
    indirect=True,
)
async def test_workers_then_queue_then_fast_503(
    backend: tuple[Simulator, Pool, web.AppRunner], held: HeldWork
) -> None:
    sim, pool, _ = backend
    # Nothing completes before all six have arrived.
    calls = [
        asyncio.create_task(pool.request("GET", TOKEN, [("x-request-id", f"r{i}")], 30.0, True))
        for i in range(6)
    ]
    await wait_for(lambda: sim.counts["arrivals"] == 6, timeout=20)
    assert (sim.busy, len(sim.queue), sim.counts["rejected_full"]) == (2, 2, 2)
    held.release()
    results = await asyncio.gather(*calls)
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


@pytest.mark.parametrize("backend", [{"workers": 1, "service_time": 0.01}], indirect=True)
async def test_work_continues_after_the_client_left(
    backend: tuple[Simulator, Pool, web.AppRunner], held: HeldWork
) -> None:
    # The work is held until its client has left: the client gives up once the server has
    # its request, and the server sees it go, before the work is done.
    sim, pool, runner = backend
    call = asyncio.create_task(pool.request("GET", TOKEN, [("x-request-id", "gone.0")]))
    await wait_for(lambda: sim.counts["arrivals"] == 1, timeout=20)
    call.cancel()  # the client gives up (its connection is aborted)
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_for(lambda: client_left(runner), timeout=20)
    await wait_for(lambda: len(held.held) == 1, timeout=20)  # its service time ran out
    assert sim.counts["completed"] == 0
    held.release()
    await wait_for(lambda: sim.counts["completed"] == 1, timeout=20)  # done all the same
    assert sim.counts["wasted"] == 1
    assert sim.completions[0][1:] == ("gone.0", 0, 1)


@pytest.mark.parametrize("backend", [{"workers": 1, "service_time": 0.01}], indirect=True)
async def test_a_client_timeout_aborts_the_connection(
    backend: tuple[Simulator, Pool, web.AppRunner], held: HeldWork
) -> None:
    # The backend holds its answer, so the client's timeout runs out: TimeoutError, and the
    # connection is aborted (never reused), which the server sees.
    _, pool, runner = backend
    with pytest.raises(TimeoutError):
        await pool.request("GET", TOKEN, timeout=0.05)
    await wait_for(lambda: pool.open_connections == 0, timeout=20)
    await wait_for(lambda: client_left(runner), timeout=20)


@pytest.mark.parametrize(
    "backend", [{"workers": 1, "service_time": 0.01, "fake_clock": True}], indirect=True
)
async def test_outage_is_a_fast_500_then_the_first_good_probe_is_noted(
    backend: tuple[Simulator, Pool, web.AppRunner],
) -> None:
    sim, pool, _ = backend
    clock = sim.clock
    assert isinstance(clock, FakeClock)
    sim.set_outage(0.2)  # from 100.0 to 100.2
    resp = await pool.request("GET", TOKEN, timeout=30.0)
    assert resp.status == 500 and resp.headers["x-backend-reason"] == "outage"
    assert (await pool.request("GET", "/healthz", timeout=30.0)).status == 500
    clock.now = 100.19  # still inside it
    assert (await pool.request("GET", "/healthz", timeout=30.0)).status == 500
    assert sim.first_good_probe is None
    assert sim.counts["outage_errors"] == 1 and sim.counts["completed"] == 0
    clock.now = 100.25  # over
    assert (await pool.request("GET", "/healthz", timeout=30.0)).status == 200
    assert sim.first_good_probe == 100.25
    clock.now = 100.3
    assert (await pool.request("GET", "/healthz", timeout=30.0)).status == 200
    assert sim.first_good_probe == 100.25  # the first good probe, not the latest
    assert (await pool.request("GET", TOKEN, timeout=30.0)).status == 200
    assert sim.outages == [(100.0, 100.2)]


async def test_thrash_slows_service_with_the_queue() -> None:
    # On a fake clock, so each job's due time is exactly its start plus its service time.
    clock = FakeClock(0.0)
    sim = Simulator(BackendConfig(workers=1, service_time=0.05, jitter=0.0, thrash=1.0), clock)
    futures = [sim.admit(False) for _ in range(4)]
    queued = list(sim.queue)
    assert len(queued) == 3
    clock.now = 10.0  # long after all of them were due: each starts when the one before ended
    done = await asyncio.wait_for(
        asyncio.gather(*(f for f in futures if not isinstance(f, str))), 20
    )
    assert len(done) == 4
    # The first starts on an empty queue (0.05 s, due at 0.05); the next three find 2, 1 and 0
    # waiting behind them: 0.05 x (1 + q) = 0.15, 0.10, 0.05. Without thrash: 0.10, 0.15, 0.20.
    assert [j.due for j in queued] == pytest.approx([0.20, 0.30, 0.35], abs=1e-9)


async def test_pool_reuses_connections_and_reports_refusals(
    backend: tuple[Simulator, Pool, web.AppRunner],
) -> None:
    _, pool, _ = backend
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
    clock = FakeClock(0.0)
    sim = Simulator(BackendConfig(workers=1, service_time=0.02, jitter=0.0, thrash=0.0), clock)
    futures = [sim.admit(False) for _ in range(4)]
    queued = list(sim.queue)
    assert len(queued) == 3
    clock.now = 0.5  # every timer runs late: the first job was due at 0.02
    done = await asyncio.wait_for(
        asyncio.gather(*(f for f in futures if not isinstance(f, str))), 20
    )
    assert len(done) == 4
    # Each queued job started when the worker came free (the one before was due), not at 0.5.
    assert [j.due for j in queued] == pytest.approx([0.04, 0.06, 0.08], abs=1e-9)
