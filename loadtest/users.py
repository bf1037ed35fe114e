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
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit

from .httpclient import ConnectError, Pool, Response

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
        started: float | None = getattr(user, "_task_started", None)
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
        self._task_started: float | None = None

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
                self._task_started = time.monotonic()
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


# --- HTTP client and stats ---------------------------------------------------------------------
@dataclass(slots=True)
class Result:
    """One request's result: the response, or the error kind ("timeout" / "connection")."""

    response: Response | None
    error: str | None
    started: float
    finished: float

    @property
    def status(self) -> int:
        """HTTP status, 0 when there was no response."""
        return self.response.status if self.response is not None else 0

    @property
    def ok(self) -> bool:
        """A 2xx/3xx response."""
        return self.response is not None and 200 <= self.response.status < 400


RequestListener = Callable[..., None]


class EventHook:
    """A list of listeners fired with keyword arguments (Locust's `events.request` shape)."""

    def __init__(self) -> None:
        self._listeners: list[RequestListener] = []

    def add_listener(self, fn: RequestListener) -> RequestListener:
        """Register `fn`; returns it so this works as a decorator."""
        self._listeners.append(fn)
        return fn

    def fire(self, **kwargs: Any) -> None:
        """Call every listener."""
        for fn in self._listeners:
            fn(**kwargs)


@dataclass
class Events:
    """The events a run fires."""

    request: EventHook = field(default_factory=EventHook)


def failure_text(result: Result) -> str | None:
    """The failure as Locust's failures CSV would name it, or None for a success."""
    if result.error == "timeout":
        return "TimeoutError('per-attempt timeout')"
    if result.error is not None:
        return "ConnectError('connection failed')"
    resp = result.response
    assert resp is not None
    if resp.status >= 400:
        reason = resp.headers.get("x-sluice-reason") or resp.headers.get("x-backend-reason")
        return f"HTTPError('{resp.status}{' ' + reason if reason else ''}')"
    return None


@dataclass(slots=True)
class Prepared:
    """A request encoded ahead of time on a connection of its own (see HttpClient.prepare)."""

    pool: Pool
    method: str
    path: str
    data: bytes
    conn: Any = None
    future: asyncio.Future[Response] | None = None
    started: float = 0.0


class HttpClient:
    """`self.client` of a user: GET/POST over the lean keep-alive pool, firing `request` events."""

    def __init__(self, environment: Environment, base_url: str | None) -> None:
        self.environment = environment
        self.base_url = base_url

    def _pool(self, base_url: str | None, source: str | None = None) -> Pool:
        url = base_url or self.base_url
        if not url:
            raise ValueError("no host: set User.host or Environment(host=...)")
        return self.environment.pool(url, source)

    def release_source(self, source: str) -> None:
        """Close the connections made from `source` (a client machine that is done)."""
        self.environment.drop_pools(source)

    async def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        base_url: str | None = None,
        context: Any = None,
        source: str | None = None,
    ) -> Result:
        """Send one request; never raises for HTTP errors, timeouts or connection errors.
        `source`: the local address to connect from (None: the system's choice)."""
        pool = self._pool(base_url, source)
        started = time.monotonic()
        response: Response | None = None
        error: str | None = None
        try:
            response = await pool.request(method, path, headers, timeout)
        except TimeoutError:
            error = "timeout"
        except ConnectError:
            error = "connection"
        return self._record(method, path, name, started, response, error, context)

    async def get(self, path: str, **kwargs: Any) -> Result:
        """GET `path` (see `request`)."""
        return await self.request("GET", path, **kwargs)

    # Bursts: prepare (encode + connect) ahead, `fire` many in one loop, then `complete` each.
    async def prepare(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        base_url: str | None = None,
        source: str | None = None,
    ) -> Prepared:
        """Encode a request and open a connection for it, to be sent later by `fire`."""
        pool = self._pool(base_url, source)
        prepared = Prepared(pool, method, path, pool.encode(method, path, headers))
        try:
            prepared.conn = await pool.connect()
        except ConnectError:
            prepared.conn = None
        return prepared

    @staticmethod
    def fire(prepared: Prepared) -> bool:
        """Write a prepared request now, synchronously; False if its connection is unusable."""
        if prepared.conn is None:
            return False
        prepared.started = time.monotonic()
        prepared.future = prepared.pool.send_now(prepared.conn, prepared.data)
        return prepared.future is not None

    async def complete(
        self,
        prepared: Prepared,
        *,
        name: str | None = None,
        timeout: float | None = None,
        context: Any = None,
    ) -> Result:
        """Await a fired request's response (timeout counted from its send), firing events."""
        assert prepared.future is not None, "fire() it first"
        response: Response | None = None
        error: str | None = None
        left = None if timeout is None else timeout - (time.monotonic() - prepared.started)
        try:
            response = await prepared.pool.finish(prepared.conn, prepared.future, left)
        except TimeoutError:
            error = "timeout"
        except ConnectError:
            error = "connection"
        return self._record(
            prepared.method, prepared.path, name, prepared.started, response, error, context
        )

    def _record(
        self,
        method: str,
        path: str,
        name: str | None,
        started: float,
        response: Response | None,
        error: str | None,
        context: Any,
    ) -> Result:
        result = Result(response, error, started, time.monotonic())
        self.environment.events.request.fire(
            request_type=method,
            name=name or path.split("?", 1)[0],
            response_time=(result.finished - started) * 1000.0,
            response_length=response.body_len if response is not None else 0,
            result=result,
            exception=failure_text(result),
            context=context,
        )
        return result


def _round_rt(ms: float) -> int:
    """Locust's response-time rounding for its histogram (2 significant digits past 100 ms)."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


class StatsEntry:
    """Counters and a rounded response-time histogram for one (method, name)."""

    def __init__(self, method: str, name: str) -> None:
        self.method = method
        self.name = name
        self.num_requests = 0
        self.num_failures = 0
        self.total_response_time = 0.0
        self.min_response_time: float | None = None
        self.max_response_time = 0.0
        self.total_content_length = 0
        self.response_times: dict[int, int] = {}

    def log(self, response_time: float, content_length: int, failed: bool) -> None:
        """Add one request."""
        self.num_requests += 1
        self.num_failures += failed
        self.total_response_time += response_time
        if self.min_response_time is None or response_time < self.min_response_time:
            self.min_response_time = response_time
        self.max_response_time = max(self.max_response_time, response_time)
        self.total_content_length += content_length
        key = _round_rt(response_time)
        self.response_times[key] = self.response_times.get(key, 0) + 1

    def extend(self, other: StatsEntry) -> None:
        """Merge another entry in (for the Aggregated row)."""
        self.num_requests += other.num_requests
        self.num_failures += other.num_failures
        self.total_response_time += other.total_response_time
        if other.min_response_time is not None and (
            self.min_response_time is None or other.min_response_time < self.min_response_time
        ):
            self.min_response_time = other.min_response_time
        self.max_response_time = max(self.max_response_time, other.max_response_time)
        self.total_content_length += other.total_content_length
        for k, v in other.response_times.items():
            self.response_times[k] = self.response_times.get(k, 0) + v

    def percentile(self, fraction: float) -> int:
        """Locust's percentile over the rounded histogram (0 when empty)."""
        return histogram_percentile(self.response_times, self.num_requests, fraction)

    @property
    def avg_response_time(self) -> float:
        """Mean response time in ms."""
        return self.total_response_time / self.num_requests if self.num_requests else 0.0

    @property
    def avg_content_length(self) -> float:
        """Mean body size in bytes."""
        return self.total_content_length / self.num_requests if self.num_requests else 0.0


def histogram_percentile(hist: dict[int, int], total: int, fraction: float) -> int:
    """The smallest value with at least `fraction` of `total` at or below it (Locust's rule)."""
    if total == 0:
        return 0
    wanted = int(total * fraction)
    processed = 0
    for value in sorted(hist, reverse=True):
        processed += hist[value]
        if total - processed <= wanted:
            return value
    return 0


class RequestStats:
    """Per-(method, name) entries plus failures, fed by the `request` event."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], StatsEntry] = {}
        self.failures: dict[tuple[str, str, str], int] = {}
        self.failure_seen: dict[tuple[str, str, str], tuple[float, float]] = {}  # wall clock
        self.start_time = time.monotonic()
        self.end_time: float | None = None

    def on_request(
        self,
        *,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: str | None,
        **_ignored: Any,
    ) -> None:
        """Listener for `events.request`."""
        key = (request_type, name)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = StatsEntry(request_type, name)
        entry.log(response_time, response_length, exception is not None)
        if exception is not None:
            fkey = (request_type, name, exception)
            self.failures[fkey] = self.failures.get(fkey, 0) + 1
            now = time.time()
            first, _last = self.failure_seen.get(fkey, (now, now))
            self.failure_seen[fkey] = (first, now)

    def total(self) -> StatsEntry:
        """The Aggregated row."""
        agg = StatsEntry("", "Aggregated")
        for entry in self.entries.values():
            agg.extend(entry)
        return agg


STATS_COLUMNS: tuple[str, ...] = (
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
)
FAILURES_COLUMNS: tuple[str, ...] = (
    "Method",
    "Name",
    "Error",
    "Occurrences",
    "First Seen",
    "Last Seen",
)
_PERCENTILES = (0.5, 0.66, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0)


def stats_rows(stats: RequestStats, duration: float) -> list[list[str]]:
    """Rows for `_stats.csv` (entries sorted by name, then the Aggregated row)."""
    duration = max(duration, 1e-9)
    rows = []
    entries = sorted(stats.entries.values(), key=lambda e: (e.name, e.method))
    for entry in [*entries, stats.total()]:
        row: list[Any] = [
            entry.method,
            entry.name,
            entry.num_requests,
            entry.num_failures,
            entry.percentile(0.5),
            round(entry.avg_response_time, 2),
            round(entry.min_response_time or 0.0, 2),
            round(entry.max_response_time, 2),
            round(entry.avg_content_length, 2),
            round(entry.num_requests / duration, 4),
            round(entry.num_failures / duration, 4),
        ]
        row.extend(entry.percentile(p) if entry.num_requests else "N/A" for p in _PERCENTILES)
        rows.append([str(v) for v in row])
    return rows


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def write_stats_csv(stats: RequestStats, prefix: str | Path, duration: float) -> list[Path]:
    """Write `<prefix>_stats.csv` and `<prefix>_failures.csv` with Locust's columns."""
    prefix = Path(prefix)
    paths = [Path(f"{prefix}_stats.csv"), Path(f"{prefix}_failures.csv")]
    with paths[0].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(STATS_COLUMNS)
        writer.writerows(stats_rows(stats, duration))
    with paths[1].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FAILURES_COLUMNS)
        for key, count in sorted(stats.failures.items()):
            first, last = stats.failure_seen.get(key, (0.0, 0.0))
            writer.writerow([*key, count, _iso(first), _iso(last)])
    return paths


# --- environment, shape, runner ----------------------------------------------------------------
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
