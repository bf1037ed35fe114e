"""The timings the tests no longer assert (issue 20): measured here and printed, never checked.

    python -m loadtest.bench_timing [--only arrival,backend,users,holds,deadlines]
                                    [--storm-seconds 3]

Tests assert behaviour (orders of events, counts, states reached, fake clocks); how long
things take on this machine is a figure, and a busy machine moves it. Each section names the
test whose old timed assertion it replaces. Loopback only; about 25 s in all, bounded; the
child processes of `deadlines` are stopped on exit, error or Ctrl-C.

- arrival: ArrivalClock on an idle loop: how much earlier than the handler's clock a request is
  stamped (the test asserted < 20 ms); after a real 80 ms stall, the stamp of a request handled
  1, 2 and 3 iterations later, against when the stall began (tests/unit/test_arrival.py).
- backend: the simulated backend in wall time: four requests on one 50 ms worker with thrash 1
  (the schedule says 0.35 s; the test asserted +/- 60 ms), queued jobs' due times with the loop
  stalled across a completion (schedule 40/60/80 ms; asserted +/- 4 ms), and its capacity under
  a closed loop of 24 (C = 20 workers / 50 ms = 400/s) (tests/integration/test_loadtest_backend.py).
- users: the harness: open-loop arrivals in 0.5 s at 200/s with 0.3 s answers (asserted
  60-150), a burst of 50 prepared requests written and sent (asserted < 50 ms each), a shape
  that ends at 0.6 s (asserted 0.55-2 s) (tests/unit/test_loadtest_users.py).
- holds: Sluice in this process, its limit held full: a retry over budget is held, then refused;
  the hold, and the client's return time (answer + Retry-After) against the slot booked for it
  (asserted +/- 50 ms); a request that waits at the limit, then is shed: its wait plus its
  Retry-After (asserted >= 1 s) (tests/integration/test_admission.py).
- deadlines: Sluice and the simulated backend as child processes, a 200/s storm with
  `x-request-timeout-ms: 1000` against a gate that queues, then with the backend SIGKILLed:
  each answer's time against its deadline (asserted: within deadline + 100 ms)
  (tests/integration/test_fault_recovery.py).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.config import load_config_data
from proxy.edge.arrival import DEFAULT_PERIOD, ArrivalClock
from proxy.edge.lifecycle import Server, start_server

from .backend import BackendConfig, Simulator, build_apps
from .bench_load import pct
from .httpclient import Pool
from .procs import (
    ProcessGroup,
    free_port,
    interrupt_on_termination,
    wait_port,
    write_sluice_config,
)
from .users import OpenLoopUser, User, constant, task
from .users_runner import Environment, HeadlessRunner, LoadTestShape

ROOT = Path(__file__).resolve().parent.parent  # children run `-m ...` from here
SECTIONS = ("arrival", "backend", "users", "holds", "deadlines")
TOKEN = "/token?resource=bench&client_id=c1"


def ms(seconds: float) -> str:
    """Seconds as milliseconds, one decimal."""
    return f"{seconds * 1000:.1f}"


def spread(values: Sequence[float]) -> str:
    """p50 / p99 / max in ms."""
    return f"p50 {ms(pct(values, 0.5))}, p99 {ms(pct(values, 0.99))}, max {ms(max(values))} ms"


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """`app` on an ephemeral loopback port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


# --- arrival ----------------------------------------------------------------------------------
async def bench_arrival(samples: int = 400) -> None:
    """ArrivalClock: how early it stamps on an idle loop, and after a real 80 ms stall."""
    clock = ArrivalClock(period=DEFAULT_PERIOD)
    clock.start()
    rng = random.Random(1)
    early = []
    try:
        for _ in range(samples):
            await asyncio.sleep(rng.uniform(0.0005, 0.005))
            now = time.monotonic()
            early.append(now - clock.earliest(now))
        print(
            f"arrival    idle loop, heartbeat {ms(DEFAULT_PERIOD)} ms: stamped before the "
            f"handler's clock by {spread(early)} ({samples} requests)"
        )
        for n in (1, 2, 3):
            await asyncio.sleep(0.01)
            began = time.monotonic()
            time.sleep(0.08)  # noqa: ASYNC251 (the loop reading a wave: nothing else runs)
            for _ in range(n):
                await asyncio.sleep(0)
            now = time.monotonic()
            print(
                f"           after an 80 ms stall, handled {n} iteration(s) later "
                f"({ms(now - began)} ms after it began): stamped "
                f"{ms(began - clock.earliest(now))} ms before it began"
            )
    finally:
        clock.stop()


# --- backend ----------------------------------------------------------------------------------
async def bench_backend() -> None:
    """The simulated backend in wall time: thrash, queued due times across a stall, capacity."""
    loop = asyncio.get_running_loop()
    sim = Simulator(BackendConfig(workers=1, service_time=0.05, thrash=1.0, jitter=0.0))
    runner, port = await serve(build_apps(sim)[0])
    pool = Pool("127.0.0.1", port)
    try:
        await pool.prewarm(4)
        t0 = loop.time()
        await asyncio.gather(*(pool.request("GET", TOKEN, timeout=10.0) for _ in range(4)))
        print(
            f"backend    4 requests, 1 worker x 50 ms, thrash 1: {loop.time() - t0:.3f} s "
            "(schedule 0.350 s; without thrash 0.200 s)"
        )
    finally:
        pool.close()
        await runner.cleanup()

    sim = Simulator(BackendConfig(workers=1, service_time=0.02, jitter=0.0, thrash=0.0))
    begin = sim.clock()
    futures = [sim.admit(False) for _ in range(4)]
    queued = list(sim.queue)
    loop.call_later(0.005, time.sleep, 0.03)  # stall across the first job's end
    await asyncio.gather(*(f for f in futures if not isinstance(f, str)))
    dues = ", ".join(ms(j.due - begin) for j in queued)
    print(
        f"           queued jobs due at {dues} ms, the loop stalled 30 ms across the first "
        "end (schedule 40, 60, 80)"
    )

    sim = Simulator(BackendConfig(workers=20, service_time=0.05, thrash=0.0, jitter=0.0))
    runner, port = await serve(build_apps(sim)[0])
    pool = Pool("127.0.0.1", port)
    stop = loop.time() + 2.0
    served = 0

    async def closed_loop() -> None:
        nonlocal served
        while loop.time() < stop:
            await pool.request("GET", TOKEN, timeout=10.0)
            served += 1

    try:
        t0 = loop.time()
        await asyncio.gather(*(closed_loop() for _ in range(24)))
        rate = served / (loop.time() - t0)
        print(f"           capacity, 20 workers x 50 ms, 24 clients: {rate:.0f}/s (C = 400/s)")
    finally:
        pool.close()
        await runner.cleanup()


# --- users ------------------------------------------------------------------------------------
async def bench_users() -> None:
    """The harness's users against a small aiohttp app: open-loop arrivals, a prepared burst,
    a shape's end."""

    async def ok(request: web.Request) -> web.Response:
        delay = float(request.query.get("sleep", "0"))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    runner, port = await serve(app)
    host = f"http://127.0.0.1:{port}"
    try:
        await _users_open_loop(host)
        await _users_burst(host)
        await _users_shape(host)
    finally:
        await runner.cleanup()


async def _users_open_loop(host: str) -> None:
    """Open-loop arrivals at 200/s for 0.5 s, each answered after 0.3 s: how many arrived."""

    class Arrivals(OpenLoopUser):
        rate = 200.0

        @task
        async def slow(self) -> None:
            await self.client.get("/ok?sleep=0.3", name="slow", timeout=5.0)

    Arrivals.host = host
    env = Environment([Arrivals], seed=7)
    try:
        await HeadlessRunner(env).run(users=1, spawn_rate=1, run_time=0.5, stop_grace=2.0)
    finally:
        env.close()
    arrivals = env.stats.entries[("GET", "slow")].num_requests
    print(
        f"users      open loop at 200/s for 0.5 s, answers taking 0.3 s: {arrivals} "
        "arrivals (expected about 100)"
    )


async def _users_burst(host: str) -> None:
    """50 prepared requests fired in one loop: how long writing them took, how spread out."""

    class Burst(User):
        pass

    Burst.host = host
    env = Environment([Burst], seed=1)
    user = Burst(env)
    try:
        prepared = [await user.client.prepare("GET", "/ok?sleep=0.05") for _ in range(50)]
        t0 = time.perf_counter()
        sent = sum(user.client.fire(p) for p in prepared)
        written = time.perf_counter() - t0
        for p in prepared:
            await user.client.complete(p, name="burst", timeout=5.0)
    finally:
        env.close()
    starts = [p.started for p in prepared]
    print(
        f"           a burst of {sent} prepared requests: written in {ms(written)} ms, "
        f"sends spread over {ms(max(starts) - min(starts))} ms"
    )


async def _users_shape(host: str) -> None:
    """A shape whose ticks end at 0.6 s: how long the run took."""

    class Idle(User):
        wait_time = constant(0.02)

        @task
        async def nothing(self) -> None:
            await asyncio.sleep(0)

    class Steps(LoadTestShape):
        def tick(self) -> tuple[int, float] | None:
            t = self.get_run_time()
            if t < 0.2:
                return (2, 1000.0)
            if t < 0.4:
                return (5, 1000.0)
            if t < 0.6:
                return (1, 1000.0)
            return None

    Idle.host = host
    env = Environment([Idle], shape=Steps(), seed=1)
    shape_runner = HeadlessRunner(env, tick_interval=0.02)
    t0 = time.monotonic()
    try:
        await shape_runner.run()
    finally:
        env.close()
    took = time.monotonic() - t0
    print(f"           a shape that ends at 0.6 s (ticks every 20 ms): ran {took:.3f} s")


# --- holds ------------------------------------------------------------------------------------
async def bench_holds(rounds: int = 10) -> None:
    """Sluice in this process with its limit held full: a held retry, then a shed request."""
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="held")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/hold", hold)
    app.router.add_get("/echo/{tail:.*}", echo)
    backend, port = await serve(app)
    try:
        await _at_the_limit(port, release, functools.partial(_retries, rounds=rounds), {})
        await _at_the_limit(port, release, _shed, {"normal_max_wait": "200ms"})
    finally:
        await backend.cleanup()


def _holds_config(port: int, queue: dict[str, Any]) -> Any:
    """Sluice with a limit of 2 in front of 127.0.0.1:`port`, no retry budget, `queue`."""
    return load_config_data(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {"url": f"http://127.0.0.1:{port}", "read_timeout": "30s"},
            "admin": {"host": "127.0.0.1", "port": 0},
            "lifecycle": {"drain_timeout": "2s", "raise_nofile": False},
            "logging": {"level": "warning"},
            "modes": {"protection": "on", "startup_window": "0s"},
            "callers": {"known": [{"name": "orch"}]},
            "limiter": {"initial": 2, "floor": 1, "ceiling": 2},
            "retry_budget": {"floor_per_s": 0, "global_floor_per_s": 0},
            "queue": queue,
        }
    )


async def _at_the_limit(
    port: int,
    release: asyncio.Event,
    body: Callable[[Server, aiohttp.ClientSession], Awaitable[None]],
    queue: dict[str, Any],
) -> None:
    """Run `body` against a Sluice whose limit is held full by two requests the backend
    holds until `release`."""
    server = await start_server(_holds_config(port, queue))
    base = f"http://127.0.0.1:{server.proxy_port}"
    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(session.get(f"{base}/hold")) for _ in range(2)]
        try:
            for _ in range(2000):  # the limit full: both held at the backend
                if server.sluice.gate.status()["in_flight"] == 2:
                    break
                await asyncio.sleep(0.01)
            await body(server, session)
        finally:
            release.set()
            for resp in await asyncio.gather(*held, return_exceptions=True):
                if isinstance(resp, aiohttp.ClientResponse):
                    resp.release()
            release.clear()
    await server.shutdown()


async def _retries(server: Server, session: aiohttp.ClientSession, rounds: int) -> None:
    """A retry over its budget, `rounds` times: how long it is held, and how far its return
    (answer + Retry-After) lands from the slot booked for it."""
    snap = server.sluice.snapshot
    orch = snap.classifier.caller_names().index("orch")
    pacer = server.sluice.gate.pacer  # type: ignore[attr-defined]
    holds, errors = [], []
    headers = {"x-caller-id": "orch", "x-retry-attempt": "1", "x-request-timeout-ms": "600"}
    for i in range(rounds):
        sent = time.monotonic()
        async with session.get(
            f"http://127.0.0.1:{server.proxy_port}/echo/{i}", headers=headers
        ) as r:
            await r.read()
            received = time.monotonic()
            retry_after = int(r.headers["retry-after-ms"]) / 1000
        booked = pacer.bookings[orch][-1].start + snap.config.shedding.slot_grace
        holds.append(received - sent)
        errors.append(abs(received + retry_after - booked))
    print(
        f"holds      a retry over its budget, held then refused ({rounds}x): held "
        f"{spread(holds)}; its return (answer + Retry-After) off the booked slot by "
        f"{spread(errors)}"
    )


async def _shed(server: Server, session: aiohttp.ClientSession) -> None:
    """A first try that waits at the limit, then is shed (3 times): its wait, its return."""
    waits, returns = [], []
    for i in range(3):
        sent = time.monotonic()
        headers = {"x-retry-attempt": "0"}
        async with session.get(
            f"http://127.0.0.1:{server.proxy_port}/echo/late{i}", headers=headers
        ) as r:
            await r.read()
            elapsed = time.monotonic() - sent
            retry_after = int(r.headers.get("retry-after-ms", "0")) / 1000
        waits.append(elapsed)
        returns.append(elapsed + retry_after)
    print(
        f"           waited at the limit (normal_max_wait 200 ms), then shed (3x): answered "
        f"after {spread(waits)}; back after {spread(returns)} (at least 1000)"
    )


# --- deadlines --------------------------------------------------------------------------------
async def storm(base: str, seconds: float, deadline_ms: int) -> list[tuple[float, str]]:
    """200 requests/s for `seconds`, each with a deadline: (answer time, outcome) each."""
    loop = asyncio.get_running_loop()
    results: list[tuple[float, str]] = []
    headers = {"x-retry-attempt": "0", "x-request-timeout-ms": str(deadline_ms)}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(n: int) -> None:
            sent = loop.time()
            try:
                async with asyncio.timeout(deadline_ms / 1000 + 10.0):
                    async with session.get(f"{base}/token?n={n}", headers=headers) as r:
                        await r.read()
                        outcome = (
                            "200"
                            if r.status == 200
                            else f"{r.status} {r.headers.get('x-sluice-reason')}"
                        )
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            results.append((loop.time() - sent, outcome))

        start = loop.time()
        tasks = []
        n = 0
        while (due := start + n / 200.0) < start + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(n)))
            n += 1
        await asyncio.gather(*tasks)
    return results


def report_deadlines(phase: str, results: list[tuple[float, str]], deadline: float) -> None:
    """One phase's answers by outcome and their times against the deadline."""
    times = [t for t, _ in results]
    outcomes: dict[str, int] = {}
    for _, o in results:
        outcomes[o] = outcomes.get(o, 0) + 1
    late = sum(t > deadline for t in times)
    slack = sum(t > deadline + 0.1 for t in times)
    margin = deadline - max(times)
    print(
        f"deadlines  {phase}: {len(results)} requests {dict(sorted(outcomes.items()))}\n"
        f"           answered after {spread(times)}; past the {ms(deadline)} ms deadline: {late} "
        f"(past it + 100 ms: {slack}); the last answer {ms(abs(margin))} ms "
        f"{'before' if margin >= 0 else 'after'} it"
    )


def bench_deadlines(seconds: float) -> None:
    """Sluice and the backend as children: a storm with deadlines against a gate that queues,
    then with the backend SIGKILLed."""
    deadline_ms = 1000
    with tempfile.TemporaryDirectory() as tmp, ProcessGroup(Path(tmp) / "logs") as group:
        bport, badmin = free_port(), free_port()
        backend = group.start(
            "backend",
            [
                "-m",
                "loadtest.backend",
                *("--port", str(bport), "--admin-port", str(badmin)),
                *("--workers", "32", "--service-time", "0.05"),
                *("--max-lifetime", "120", "--parent-pid", str(os.getpid())),
            ],
            cwd=ROOT,
        )
        wait_port(badmin, timeout=20.0)
        sport, sadmin = free_port(), free_port()
        path = write_sluice_config(
            Path(tmp) / "sluice.yaml",
            port=sport,
            upstream_port=bport,
            admin_port=sadmin,
            overrides={
                "upstream": {
                    "read_timeout": "2s",
                    "connect_timeout": "500ms",
                    "probe_interval": "100ms",
                    "probe_interval_normal": "200ms",
                    "probe_timeout": "300ms",
                },
                "lifecycle": {"drain_timeout": "2s"},
                "logging": {"level": "warning"},
                "modes": {
                    "protection": "on",
                    "startup_window": "0s",
                    "min_dwell": "300ms",
                    "error_window": "1s",
                    "outage_min_samples": 5,
                },
                # About 80/s through a ceiling of 4 x 50 ms: a 200/s storm queues behind it.
                "limiter": {"floor": 2, "initial": 4, "ceiling": 4},
                "queue": {"max_size": 200},
                "recovery": {"hold": "500ms", "batch_interval": "400ms"},
                "shedding": {"deadline_margin": "200ms"},
            },
        )
        group.start("sluice", ["-m", "proxy", "--config", str(path)], cwd=ROOT)
        wait_port(sadmin, timeout=20.0)
        base = f"http://127.0.0.1:{sport}"
        busy = asyncio.run(storm(base, seconds, deadline_ms))
        report_deadlines("a gate that queues", busy, deadline_ms / 1000)
        backend.popen.kill()
        backend.popen.wait(10)
        dead = asyncio.run(storm(base, seconds, deadline_ms))
        report_deadlines("the backend SIGKILLed", dead, deadline_ms / 1000)


def main(argv: list[str] | None = None) -> int:
    """Command line of `python -m loadtest.bench_timing`."""
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_timing", description=__doc__)
    p.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    p.add_argument("--storm-seconds", type=float, default=3.0, help="each deadlines phase")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if not 0 < args.storm_seconds <= 30:
        p.error("--storm-seconds must be in (0, 30]")
    interrupt_on_termination()
    cpus = os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}, {cpus} CPUs, load average {load}")
    for section in SECTIONS:
        if section not in only:
            continue
        if section == "deadlines":
            bench_deadlines(args.storm_seconds)
        else:
            runs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                "arrival": bench_arrival,
                "backend": bench_backend,
                "users": bench_users,
                "holds": bench_holds,
            }
            asyncio.run(runs[section]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
