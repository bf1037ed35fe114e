"""Running users (loadtest.users): the environment a run shares, load shapes, and the
headless runner that spawns, stops and counts users."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .httpclient import Pool
from .users import OpenLoopUser, User
from .users_client import Events
from .users_stats import RequestStats, write_stats_csv


class Environment:
    """What a run shares: user classes, shape, stats, events, connection pools, seed."""

    def __init__(
        self,
        user_classes: Sequence[type[User]] = (),
        shape: LoadTestShape | None = None,
        host: str | None = None,
        seed: int | str = 0,
    ) -> None:
        self.user_classes = list(user_classes)
        self.shape = shape
        self.host = host
        self.seed = seed
        self.events = Events()
        self.stats = RequestStats()
        self.events.request.add_listener(self.stats.on_request)
        self.runner: HeadlessRunner | None = None
        self._pools: dict[tuple[str, int, str | None], Pool] = {}

    def pool(self, base_url: str, source: str | None = None) -> Pool:
        """The shared keep-alive pool for `http://host:port` (from local address `source`)."""
        parts = urlsplit(base_url if "//" in base_url else f"http://{base_url}")
        if parts.scheme not in ("http", ""):
            raise ValueError(f"only plain http is supported: {base_url!r}")
        key = (parts.hostname or "127.0.0.1", parts.port or 80, source)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(key[0], key[1], source=source)
        return pool

    def drop_pools(self, source: str) -> None:
        """Close and forget the pools of local address `source`."""
        for key in [k for k in self._pools if k[2] == source]:
            self._pools.pop(key).close()

    def close(self) -> None:
        """Close every pooled connection."""
        for pool in self._pools.values():
            pool.close()


ShapeTick = tuple[int, float] | tuple[int, float, Sequence[type[User]]] | None


class LoadTestShape:
    """Controls users over time: `tick()` returns (users, spawn_rate[, user_classes]) or None."""

    def __init__(self) -> None:
        self.start_time = time.monotonic()

    def reset_time(self) -> None:
        """Restart the shape's clock (the runner calls this when it starts)."""
        self.start_time = time.monotonic()

    def get_run_time(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.start_time

    def tick(self) -> ShapeTick:
        """The target now; None stops the run."""
        raise NotImplementedError


def distribute(count: int, classes: Sequence[type[User]]) -> dict[type[User], int]:
    """How many users of each class for `count` users: fixed counts first, then by weight.

    Weighted shares use largest remainders, so the counts always add up to `count` (less if
    fixed counts alone exceed it, in class order).
    """
    out = {cls: 0 for cls in classes}
    left = count
    for cls in classes:
        if cls.fixed_count:
            n = min(cls.fixed_count, left)
            out[cls] = n
            left -= n
    weighted = [cls for cls in classes if not cls.fixed_count and cls.weight > 0]
    total_w = sum(cls.weight for cls in weighted)
    if left <= 0 or not weighted:
        return out
    shares = [(cls, left * cls.weight / total_w) for cls in weighted]
    for cls, share in shares:
        out[cls] = math.floor(share)
    rest = left - sum(math.floor(s) for _, s in shares)
    by_remainder = sorted(shares, key=lambda cs: cs[1] - math.floor(cs[1]), reverse=True)
    for cls, _ in by_remainder[:rest]:
        out[cls] += 1
    return out


class HeadlessRunner:
    """Runs users headless: to a fixed count for a time, or following the environment's shape."""

    def __init__(self, environment: Environment, tick_interval: float = 0.05) -> None:
        self.environment = environment
        environment.runner = self
        self.tick_interval = tick_interval
        self.users: dict[type[User], list[tuple[User, asyncio.Task[None]]]] = {}
        self.finished_users = 0
        self._spawner: asyncio.Task[None] | None = None
        self._counter = 0
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    @property
    def user_count(self) -> int:
        """Users currently running."""
        return sum(len(v) for v in self.users.values())

    def _spawn_one(self, cls: type[User]) -> None:
        user = cls(self.environment, self._counter)
        self._counter += 1
        entry_list = self.users.setdefault(cls, [])
        t = asyncio.create_task(user.run())
        entry = (user, t)
        entry_list.append(entry)

        def done(_: asyncio.Task[None]) -> None:
            with contextlib.suppress(ValueError):
                entry_list.remove(entry)
            self.finished_users += 1

        t.add_done_callback(done)

    async def _spawn(self, todo: list[type[User]], rate: float) -> None:
        if rate <= 0 or math.isinf(rate) or rate >= len(todo):
            for cls in todo:
                self._spawn_one(cls)
            return
        # On schedule, not one sleep per user: timers fire a millisecond or so late, which at
        # 1,000 users/s would double the spawn time; each wake-up spawns every user now due.
        started = time.monotonic()
        spawned = 0
        while spawned < len(todo):
            due = min(len(todo), int((time.monotonic() - started) * rate) + 1)
            while spawned < due:
                self._spawn_one(todo[spawned])
                spawned += 1
            if spawned < len(todo):
                await asyncio.sleep(max(0.0, started + spawned / rate - time.monotonic()))

    async def start(
        self, user_count: int, spawn_rate: float, user_classes: Sequence[type[User]] | None = None
    ) -> None:
        """Move toward `user_count` users (spawning at `spawn_rate`/s, stopping at once)."""
        classes = list(user_classes or self.environment.user_classes)
        classes = [c for c in classes if not c.abstract]
        target = distribute(user_count, classes)
        todo: list[type[User]] = []
        for cls, want in target.items():
            have = self.users.get(cls, [])
            if want > len(have):
                todo.extend([cls] * (want - len(have)))
            for user, _ in have[want:]:
                user.request_stop()
        if self._spawner is not None and not self._spawner.done():
            self._spawner.cancel()
        if todo:
            self._spawner = asyncio.create_task(self._spawn(todo, spawn_rate))

    async def run(
        self,
        users: int | None = None,
        spawn_rate: float = 1.0,
        run_time: float | None = None,
        stop_grace: float = 1.0,
    ) -> None:
        """Run to completion: the shape's ticks, or `users` for `run_time` seconds."""
        self.started_at = time.monotonic()
        self.environment.stats.start_time = self.started_at
        shape = self.environment.shape
        try:
            if shape is not None:
                shape.reset_time()
                last: ShapeTick = None
                while True:
                    tick = shape.tick()
                    if tick is None:
                        break
                    if tick != last:
                        classes = tick[2] if len(tick) == 3 else None
                        await self.start(tick[0], tick[1], classes)
                        last = tick
                    await asyncio.sleep(self.tick_interval)
            else:
                if users is None:
                    raise ValueError("give users (and run_time) or an environment shape")
                await self.start(users, spawn_rate)
                await asyncio.sleep(run_time if run_time is not None else 0.0)
        finally:
            await self.stop(stop_grace)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop every user; wait up to `grace` s for work in progress, then cancel the rest."""
        if self._spawner is not None:
            self._spawner.cancel()
        pending: list[asyncio.Task[None]] = []
        for entries in self.users.values():
            for user, t in entries:
                user.request_stop()
                pending.append(t)
                if isinstance(user, OpenLoopUser):
                    pending.extend(user.outstanding)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
        self.stopped_at = time.monotonic()
        self.environment.stats.end_time = self.stopped_at


def run_headless(
    user_classes: Iterable[type[User]],
    *,
    host: str | None = None,
    users: int | None = None,
    spawn_rate: float = 1.0,
    run_time: float | None = None,
    shape: LoadTestShape | None = None,
    csv_prefix: str | Path | None = None,
    seed: int = 0,
) -> RequestStats:
    """Convenience: run user classes headless in a fresh event loop; optionally write CSVs."""

    async def go() -> RequestStats:
        env = Environment(list(user_classes), shape=shape, host=host, seed=seed)
        runner = HeadlessRunner(env)
        try:
            await runner.run(users=users, spawn_rate=spawn_rate, run_time=run_time)
        finally:
            env.close()
        if csv_prefix is not None:
            duration = (runner.stopped_at or time.monotonic()) - (runner.started_at or 0.0)
            write_stats_csv(env.stats, csv_prefix, duration)
        return env.stats

    return asyncio.run(go())
