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
  Retry-After (asserted >= 1 s once; since `shedding.retry_after_min` is 100 ms, the refusal
  + 100 ms) (tests/integration/test_admission.py); in `bench_timing_holds.py`.
- deadlines: Sluice and the simulated backend as child processes, a 200/s storm with
  `x-request-timeout-ms: 1000` against a gate that queues, then with the backend SIGKILLed:
  each answer's time against its deadline (asserted: within deadline + 100 ms)
  (tests/integration/test_fault_recovery.py); in `bench_timing_deadlines.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from proxy.edge.arrival import DEFAULT_PERIOD, ArrivalClock

from .backend_http import build_apps
from .backend_sim import BackendConfig, Simulator
from .bench_timing_common import TOKEN, ms, serve, spread
from .bench_timing_deadlines import bench_deadlines
from .bench_timing_holds import bench_holds
from .httpclient import Pool
from .procs import (
    interrupt_on_termination,
)
from .users import OpenLoopUser, User, constant, task
from .users_runner import Environment, HeadlessRunner, LoadTestShape

SECTIONS = ("arrival", "backend", "users", "holds", "deadlines")


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
