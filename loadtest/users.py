"""A small Locust-style user API on asyncio (the harness's own face; Locust itself is not used).

Users are classes with weighted `@task` methods (coroutines), a `wait_time` and `on_start` /
`on_stop`, as in Locust; a `LoadTestShape`'s `tick()` returns `(users, spawn_rate)` (optionally
with user classes) or None to stop; `HeadlessRunner` runs them and `write_stats_csv` writes
Locust's CSV columns. Two additions for incident replays:

- `OpenLoopUser`: an arrival process rather than a person. Arrivals are Poisson at `rate` per
  second, and each runs one task in its own asyncio task whether or not earlier ones finished
  (open loop), so a slow system cannot slow the offered load down. The arrival's intended start
  is in the `intended_start` context variable, so latency is measured from it (no coordinated
  omission).
- `StopUser`: raised (or `self.stop()`) by a user that has done its one piece of work; the runner
  does not respawn it (a blocked workflow that got its token is finished).

Example::

    class Orchestrator(User):
        host = "http://127.0.0.1:8080"
        wait_time = between(0.5, 1.5)

        @task(3)
        async def token(self) -> None:
            await self.client.get("/metadata/identity/oauth2/token?resource=x", name="token")

Modules, as Locust has them: this one (users, tasks, wait times), users_client (`self.client`,
its results and the `request` event), users_stats (the statistics and their CSVs) and
users_runner (the environment, shapes and the headless runner).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from .users_client import HttpClient

if TYPE_CHECKING:
    from .users_runner import Environment

TaskFunc = Callable[[Any], Awaitable[None]]
WaitTime = Callable[[Any], float]
F = TypeVar("F", bound=Callable[..., Any])

# The instant an open-loop arrival was scheduled for (time.monotonic()); None for closed loops.
intended_start: ContextVar[float | None] = ContextVar("intended_start", default=None)


class StopUser(Exception):
    """Raised inside a task: this user is done and will not be respawned."""


# --- tasks and wait times ----------------------------------------------------------------------
def task(weight: int | F = 1) -> Any:
    """Mark a coroutine method as a task: `@task` (weight 1) or `@task(3)`."""
    if callable(weight):
        weight.task_weight = 1  # type: ignore[attr-defined]
        return weight

    def deco(fn: F) -> F:
        if weight < 0:
            raise ValueError("task weight must be >= 0")
        fn.task_weight = weight  # type: ignore[attr-defined]
        return fn

    return deco


def between(low: float, high: float) -> WaitTime:
    """Wait a uniformly random time in [low, high] seconds after each task."""

    def wait(user: Any) -> float:
        return cast(float, user.rng.uniform(low, high))

    return wait


def constant(seconds: float) -> WaitTime:
    """Wait the same time after each task."""

    def wait(user: Any) -> float:
        return seconds

    return wait


def constant_pacing(seconds: float, clock: Callable[[], float] = time.monotonic) -> WaitTime:
    """Start a task every `seconds` (the wait shrinks by the task's own duration). `clock` must
    be the one the user's task start is read with (`time.monotonic`; tests pass a fake)."""

    def wait(user: Any) -> float:
        started: float | None = getattr(user, "task_started", None)
        if started is None:
            return seconds
        return max(0.0, seconds - (clock() - started))

    return wait


def _collect_tasks(cls: type, explicit: Any) -> list[tuple[TaskFunc, int]]:
    if explicit is not None:
        if isinstance(explicit, dict):
            return [(fn, int(w)) for fn, w in explicit.items()]
        return [(fn, 1) for fn in explicit]
    found: dict[str, tuple[TaskFunc, int]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            weight = getattr(value, "task_weight", None)
            if weight is not None:
                found[name] = (value, int(weight))
    return list(found.values())


class _UserMeta(type):
    """Collects `@task` methods (inherited ones too) into `tasks` as (function, weight)."""

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> _UserMeta:
        explicit = ns.pop("tasks", None)
        ns.setdefault("abstract", False)
        cls = super().__new__(mcs, name, bases, ns)
        cls.tasks = _collect_tasks(cls, explicit)  # type: ignore[attr-defined]
        return cls


# --- users -------------------------------------------------------------------------------------
class User(metaclass=_UserMeta):
    """A simulated client: picks a weighted task, runs it, waits `wait_time`, repeats."""

    abstract: ClassVar[bool] = True
    weight: ClassVar[int] = 1
    fixed_count: ClassVar[int] = 0
    host: ClassVar[str | None] = None
    tasks: ClassVar[list[tuple[TaskFunc, int]]] = []

    def wait_time(self) -> float:
        """Seconds to wait after a task (override, or assign `between(...)` / `constant(...)`)."""
        return 0.0

    def __init__(self, environment: Environment, index: int = 0) -> None:
        self.environment = environment
        self.index = index
        self.rng = random.Random(f"{environment.seed}:{type(self).__name__}:{index}")
        self.client = HttpClient(environment, self.host or environment.host)
        self._stopping = False
        self.task_started: float | None = None

    async def on_start(self) -> None:
        """Called once when the user starts (override)."""

    async def on_stop(self) -> None:
        """Called once when the user stops (override)."""

    def stop(self) -> None:
        """Finish this user now (from inside a task)."""
        raise StopUser

    def request_stop(self) -> None:
        """Ask the user to stop after its current task (from outside)."""
        self._stopping = True

    def pick_task(self) -> TaskFunc:
        """A task chosen by weight."""
        tasks = type(self).tasks
        if not tasks:
            raise RuntimeError(f"{type(self).__name__} has no tasks")
        if len(tasks) == 1:
            return tasks[0][0]
        fns = [fn for fn, _ in tasks]
        weights = [w for _, w in tasks]
        return self.rng.choices(fns, weights)[0]

    async def run(self) -> None:
        """The closed loop: on_start, then task / wait until stopped, then on_stop."""
        try:
            await self.on_start()
            while not self._stopping:
                self.task_started = time.monotonic()
                try:
                    await self.pick_task()(self)
                except StopUser:
                    break
                if self._stopping:
                    break
                await asyncio.sleep(self.wait_time())
        except StopUser:
            pass
        finally:
            await self.on_stop()


class OpenLoopUser(User):
    """An open-loop arrival process: Poisson arrivals at `rate`/s, one task each, never waiting.

    `max_outstanding` bounds the tasks alive at once (arrivals past it are counted in
    `dropped` and not run), so a collapsed system cannot make the generator grow without end.
    """

    abstract = True
    rate: ClassVar[float] = 1.0
    max_outstanding: ClassVar[int] = 50_000

    def __init__(self, environment: Environment, index: int = 0) -> None:
        super().__init__(environment, index)
        # Arrival gaps get their own generator, so a seed gives the same arrival times
        # whatever the tasks draw (and however the system under test answers).
        self.arrival_rng = random.Random(f"{environment.seed}:{type(self).__name__}:{index}:arr")
        self.outstanding: set[asyncio.Task[None]] = set()
        self.arrivals = 0
        self.dropped = 0

    async def _one(self, fn: TaskFunc) -> None:
        try:
            await fn(self)
        except StopUser:
            self._stopping = True

    async def run(self) -> None:
        """Schedule arrivals from now on; each arrival's task gets its intended start."""
        try:
            await self.on_start()
            t = time.monotonic()
            while not self._stopping:
                t += self.arrival_rng.expovariate(self.rate)
                delay = t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._stopping:
                    break
                fn = self.pick_task()
                self.arrivals += 1
                if len(self.outstanding) >= self.max_outstanding:
                    self.dropped += 1
                    continue
                token = intended_start.set(t)
                try:
                    child = asyncio.create_task(self._one(fn))
                finally:
                    intended_start.reset(token)
                self.outstanding.add(child)
                child.add_done_callback(self.outstanding.discard)
        finally:
            await self.on_stop()
