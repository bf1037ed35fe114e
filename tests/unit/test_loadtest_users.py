"""The harness's Locust-style user API: tasks, wait times, shapes, runner, stats CSV."""

from __future__ import annotations

import asyncio
import csv
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from loadtest.users import (
    OpenLoopUser,
    StopUser,
    User,
    between,
    constant,
    constant_pacing,
    intended_start,
    task,
)
from loadtest.users_runner import Environment, HeadlessRunner, LoadTestShape, distribute
from loadtest.users_stats import (
    FAILURES_COLUMNS,
    STATS_COLUMNS,
    RequestStats,
    histogram_percentile,
    write_stats_csv,
)
from tests.support import wait_for


# --- pure parts ---------------------------------------------------------------------------------
class _Base(User):
    abstract = True

    @task(3)
    async def often(self) -> None:
        """Weighted 3."""

    @task
    async def rarely(self) -> None:
        """Weighted 1."""


class _Child(_Base):
    @task(2)
    async def extra(self) -> None:
        """Added by the subclass."""


def test_task_decorator_collects_weights_including_inherited() -> None:
    weights = {fn.__name__: w for fn, w in _Child.tasks}
    assert weights == {"often": 3, "rarely": 1, "extra": 2}
    assert _Base.abstract and not _Child.abstract


def test_explicit_tasks_dict_like_locust() -> None:
    async def one(user: Any) -> None:
        return None

    class Explicit(User):
        tasks = {one: 5}

    assert Explicit.tasks == [(one, 5)]


def test_pick_task_follows_weights() -> None:
    env = Environment(seed=3)
    user = _Child(env)
    counts = Counter(user.pick_task().__name__ for _ in range(6000))
    assert counts["often"] / counts["rarely"] == pytest.approx(3, rel=0.15)
    assert counts["extra"] / counts["rarely"] == pytest.approx(2, rel=0.15)


def test_wait_time_helpers() -> None:
    class U(User):
        wait_time = between(1.0, 2.0)

    user = U(Environment(seed=1))
    waits = [user.wait_time() for _ in range(200)]
    assert all(1.0 <= w <= 2.0 for w in waits)
    assert constant(0.25)(user) == 0.25
    now = 100.0
    pacing = constant_pacing(1.0, clock=lambda: now)
    assert pacing(user) == 1.0  # no task started yet
    user.task_started = 99.6  # the task took 0.4 s: wait the rest of the second
    assert pacing(user) == pytest.approx(0.6)
    user.task_started = 97.0  # it took 3 s: start the next one at once
    assert pacing(user) == 0.0


def test_distribute_fixed_counts_first_then_weights() -> None:
    class A(User):
        fixed_count = 2

    class B(User):
        weight = 3

    class C(User):
        weight = 1

    assert distribute(10, [A, B, C]) == {A: 2, B: 6, C: 2}
    assert distribute(1, [A, B, C]) == {A: 1, B: 0, C: 0}
    assert sum(distribute(7, [B, C]).values()) == 7


def test_histogram_percentile_is_locusts_rule() -> None:
    # Locust walks down from the slowest bucket and stops once at most int(n * p) requests
    # remain below; with exactly 50 % at 10 ms, its median is therefore the next bucket up.
    hist = {10: 50, 20: 30, 100: 15, 1000: 5}
    assert histogram_percentile(hist, 100, 0.49) == 10
    assert histogram_percentile(hist, 100, 0.5) == 20
    assert histogram_percentile(hist, 100, 0.79) == 20
    assert histogram_percentile(hist, 100, 0.8) == 100
    assert histogram_percentile(hist, 100, 0.95) == 1000
    assert histogram_percentile(hist, 100, 1.0) == 1000
    assert histogram_percentile({}, 0, 0.5) == 0


def test_stats_csv_has_locusts_columns(tmp_path: Path) -> None:
    stats = RequestStats()
    rng = random.Random(1)
    for _ in range(100):
        stats.on_request(
            request_type="GET",
            name="token",
            response_time=rng.uniform(1, 200),
            response_length=1400,
            exception=None,
        )
    stats.on_request(
        request_type="GET",
        name="token",
        response_time=5.0,
        response_length=80,
        exception="HTTPError('503 overload')",
    )
    stats_path, failures_path = write_stats_csv(stats, tmp_path / "run", duration=10.0)
    with stats_path.open() as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == STATS_COLUMNS
    assert rows[0][:4] == ["Type", "Name", "Request Count", "Failure Count"]
    assert rows[1][:4] == ["GET", "token", "101", "1"]
    assert rows[-1][1] == "Aggregated"
    assert float(rows[1][STATS_COLUMNS.index("Requests/s")]) == pytest.approx(10.1)
    with failures_path.open() as fh:
        failures = list(csv.reader(fh))
    assert tuple(failures[0]) == FAILURES_COLUMNS
    assert failures[0] == ["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"]
    assert failures[1][:4] == ["GET", "token", "HTTPError('503 overload')", "1"]
    assert failures[1][4].endswith("Z") and failures[1][4] <= failures[1][5]


# --- the runner against a real server on loopback ------------------------------------------------
# No test here reads the clock: runs end on a state reached (requests counted, users finished,
# a shape's steps reached), and `wait_for`'s timeout only guards against a hang. The timings
# (open-loop arrival rate, a burst's spread) are printed by `python -m loadtest.bench_timing`.
class Server:
    """A loopback server: `/ok`, `/busy` (a 503), and `/held`, which answers only once
    `release` is set (`arrived` and `answered` count its requests)."""

    def __init__(self) -> None:
        self.url = ""
        self.release = asyncio.Event()
        self.arrived = 0
        self.answered = 0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    served = Server()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"x-sluice-reason": "overload"})

    async def held(request: web.Request) -> web.Response:
        served.arrived += 1
        await served.release.wait()
        served.answered += 1
        return web.Response(text="held")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/busy", busy)
    app.router.add_get("/held", held)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield served
    served.release.set()
    await runner.cleanup()


def requests_made(env: Environment) -> int:
    return sum(entry.num_requests for entry in env.stats.entries.values())


async def test_runner_fixed_users_with_weighted_tasks(server: Server) -> None:
    started: list[int] = []

    class Caller(User):
        host = server.url
        wait_time = constant(0.01)

        async def on_start(self) -> None:
            started.append(self.index)

        @task(3)
        async def good(self) -> None:
            await self.client.get("/ok", name="ok")

        @task(1)
        async def bad(self) -> None:
            await self.client.get("/busy", name="busy")

    env = Environment([Caller], seed=1)
    runner = HeadlessRunner(env)
    try:
        await runner.start(4, 100)
        await wait_for(lambda: requests_made(env) >= 80, timeout=20)
        await runner.stop()
    finally:
        env.close()
    assert sorted(started) == [0, 1, 2, 3]
    ok = env.stats.entries[("GET", "ok")]
    busy = env.stats.entries[("GET", "busy")]
    assert ok.num_requests > busy.num_requests > 0
    assert ok.num_failures == 0 and busy.num_failures == busy.num_requests
    assert env.stats.failures == {("GET", "busy", "HTTPError('503 overload')"): busy.num_requests}
    assert runner.user_count == 0


async def test_shape_ticks_drive_user_count_and_stop(server: Server) -> None:
    # The shape steps 2 -> 5 -> 1 users, each step once the runner has reached the one before
    # (a state, not a time), then returns None: the run ends and every user is stopped.
    steps = [2, 5, 1]
    seen: list[int] = []  # the runner's user count at each tick

    class Idle(User):
        host = server.url
        wait_time = constant(0.01)

        @task
        async def nothing(self) -> None:
            await asyncio.sleep(0)

    class Steps(LoadTestShape):
        step = 0

        def tick(self) -> tuple[int, float] | None:
            count = runner.user_count
            seen.append(count)
            if self.step < len(steps) and count == steps[self.step]:
                self.step += 1
            if self.step == len(steps):
                return None
            return (steps[self.step], 1000.0)

    env = Environment([Idle], shape=Steps(), seed=1)
    runner = HeadlessRunner(env, tick_interval=0.01)
    await asyncio.wait_for(runner.run(), 30)  # the timeout only guards against a hang
    assert seen[0] == 0 and seen[-1] == 1
    first_two, first_five = seen.index(2), seen.index(5)
    assert first_two < first_five
    assert max(seen) == 5 and max(seen[:first_five]) == 2  # up to 2, then to 5
    after = seen[first_five:]
    assert all(a >= b for a, b in itertools.pairwise(after))  # then only down, to 1
    assert runner.user_count == 0


async def test_open_loop_user_does_not_wait_for_slow_answers(server: Server) -> None:
    starts: list[float | None] = []

    class Arrivals(OpenLoopUser):
        host = server.url
        rate = 200.0

        @task
        async def slow(self) -> None:
            starts.append(intended_start.get())
            await self.client.get("/held", name="slow", timeout=30.0)

    env = Environment([Arrivals], seed=7)
    runner = HeadlessRunner(env)
    try:
        await runner.start(1, 1)
        # Open loop: one user keeps sending although not one answer has come back.
        await wait_for(lambda: server.arrived >= 20, timeout=20)
        assert server.answered == 0
        server.release.set()
        await runner.stop(grace=20)
    finally:
        server.release.set()
        env.close()
    assert len(starts) >= 20
    # Each arrival has its own intended start, on one schedule (Poisson gaps, so increasing).
    assert all(s is not None for s in starts)
    assert all(a < b for a, b in itertools.pairwise(s for s in starts if s is not None))
    assert env.stats.entries[("GET", "slow")].num_requests == len(starts) == server.answered
    assert env.stats.entries[("GET", "slow")].num_failures == 0


async def test_stop_user_is_not_respawned(server: Server) -> None:
    class OneShot(User):
        host = server.url

        @task
        async def once(self) -> None:
            await self.client.get("/ok", name="once")
            raise StopUser

    env = Environment([OneShot], seed=1)
    runner = HeadlessRunner(env)
    try:
        await runner.start(6, 1000)
        await wait_for(lambda: runner.finished_users >= 6, timeout=20)
        assert runner.user_count == 0  # none came back in its place
        await runner.stop()
    finally:
        env.close()
    assert env.stats.entries[("GET", "once")].num_requests == 6
    assert runner.finished_users == 6


async def test_prepared_requests_fire_in_one_burst(server: Server) -> None:
    class Burst(User):
        host = server.url

    env = Environment([Burst], seed=1)
    user = Burst(env)
    loop = asyncio.get_running_loop()
    sent_by_next_step: list[int] = []
    try:
        prepared = [await user.client.prepare("GET", "/held") for _ in range(50)]
        # One loop of writes, no awaits in between: by the loop's next step all 50 are sent.
        loop.call_soon(
            lambda: sent_by_next_step.append(sum(p.future is not None for p in prepared))
        )
        fired = [user.client.fire(p) for p in prepared]
        await asyncio.sleep(0)
        # ...and on the wire: the server has every one of them before it answers any.
        await wait_for(lambda: server.arrived == 50, timeout=20)
        assert server.answered == 0
        server.release.set()
        results = [await user.client.complete(p, name="burst", timeout=30.0) for p in prepared]
    finally:
        env.close()
    assert fired == [True] * 50
    assert sent_by_next_step == [50]
    assert all(p.started > 0 for p in prepared)  # each response time counts from its send
    assert all(r.ok for r in results)
    assert env.stats.entries[("GET", "burst")].num_requests == 50
    # A prepared request whose connection could not open is reported as unusable, not sent.
    refused = await user.client.prepare("GET", "/", base_url="http://127.0.0.1:1")
    assert refused.conn is None and not user.client.fire(refused)
