"""The harness's Locust-style user API: tasks, wait times, shapes, runner, stats CSV."""

from __future__ import annotations

import asyncio
import csv
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from loadtest.users import (
    FAILURES_COLUMNS,
    STATS_COLUMNS,
    Environment,
    HeadlessRunner,
    LoadTestShape,
    OpenLoopUser,
    RequestStats,
    StopUser,
    User,
    between,
    constant,
    constant_pacing,
    distribute,
    histogram_percentile,
    intended_start,
    task,
    write_stats_csv,
)


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
    pacing = constant_pacing(1.0)
    user._task_started = time.monotonic() - 0.4
    assert pacing(user) == pytest.approx(0.6, abs=0.05)
    user._task_started = time.monotonic() - 3.0
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
@pytest.fixture
async def server() -> Any:
    async def ok(request: web.Request) -> web.Response:
        delay = float(request.query.get("sleep", "0"))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"x-sluice-reason": "overload"})

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/busy", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_runner_fixed_users_with_weighted_tasks(server: str, tmp_path: Path) -> None:
    started: list[int] = []

    class Caller(User):
        host = server
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
        await runner.run(users=4, spawn_rate=100, run_time=0.4)
    finally:
        env.close()
    assert sorted(started) == [0, 1, 2, 3]
    ok = env.stats.entries[("GET", "ok")]
    busy = env.stats.entries[("GET", "busy")]
    assert ok.num_requests > busy.num_requests > 0
    assert ok.num_failures == 0 and busy.num_failures == busy.num_requests
    assert env.stats.failures == {("GET", "busy", "HTTPError('503 overload')"): busy.num_requests}
    assert runner.user_count == 0


async def test_shape_ticks_drive_user_count_and_stop(server: str) -> None:
    seen: list[int] = []

    class Idle(User):
        host = server
        wait_time = constant(0.02)

        @task
        async def nothing(self) -> None:
            await asyncio.sleep(0)

    class Steps(LoadTestShape):
        def tick(self) -> tuple[int, float] | None:
            t = self.get_run_time()
            if runner_ref:
                seen.append(runner_ref[0].user_count)
            if t < 0.2:
                return (2, 1000.0)
            if t < 0.4:
                return (5, 1000.0)
            if t < 0.6:
                return (1, 1000.0)
            return None

    runner_ref: list[HeadlessRunner] = []
    env = Environment([Idle], shape=Steps(), seed=1)
    runner = HeadlessRunner(env, tick_interval=0.02)
    runner_ref.append(runner)
    t0 = time.monotonic()
    await runner.run()
    assert 0.55 < time.monotonic() - t0 < 2.0
    assert max(seen) == 5
    assert 1 in seen[-5:]
    assert runner.user_count == 0


async def test_open_loop_user_does_not_wait_for_slow_answers(server: str) -> None:
    starts: list[float | None] = []

    class Arrivals(OpenLoopUser):
        host = server
        rate = 200.0

        @task
        async def slow(self) -> None:
            starts.append(intended_start.get())
            await self.client.get("/ok?sleep=0.3", name="slow", timeout=2.0)

    env = Environment([Arrivals], seed=7)
    runner = HeadlessRunner(env)
    try:
        await runner.run(users=1, spawn_rate=1, run_time=0.5, stop_grace=1.0)
    finally:
        env.close()
    # Open loop: ~100 arrivals in 0.5 s although each answer takes 0.3 s.
    assert 60 <= len(starts) <= 150
    assert all(s is not None for s in starts)
    assert env.stats.entries[("GET", "slow")].num_requests == len(starts)


async def test_stop_user_is_not_respawned(server: str) -> None:
    class OneShot(User):
        host = server

        @task
        async def once(self) -> None:
            await self.client.get("/ok", name="once")
            raise StopUser

    env = Environment([OneShot], seed=1)
    runner = HeadlessRunner(env)
    try:
        await runner.run(users=6, spawn_rate=1000, run_time=0.3)
    finally:
        env.close()
    assert env.stats.entries[("GET", "once")].num_requests == 6
    assert runner.finished_users == 6


async def test_prepared_requests_fire_in_one_burst(server: str) -> None:
    class Burst(User):
        host = server

    env = Environment([Burst], seed=1)
    user = Burst(env)
    try:
        prepared = [await user.client.prepare("GET", "/ok?sleep=0.05") for _ in range(50)]
        t0 = time.monotonic()
        assert all(user.client.fire(p) for p in prepared)
        written = time.monotonic() - t0
        results = [await user.client.complete(p, name="burst", timeout=2.0) for p in prepared]
    finally:
        env.close()
    assert written < 0.05  # one loop of writes, no awaits in between
    assert all(r.ok for r in results)
    assert max(p.started for p in prepared) - min(p.started for p in prepared) < 0.05
    assert env.stats.entries[("GET", "burst")].num_requests == 50
    # A prepared request whose connection could not open is reported as unusable, not sent.
    refused = await user.client.prepare("GET", "/", base_url="http://127.0.0.1:1")
    assert refused.conn is None and not user.client.fire(refused)
