"""The simulated managed-identity (token) backend's model: a worker pool that fails the way real
ones do, and its records for `/stats` (no sockets: futures and timers on the running loop).

- Fixed capacity: `workers` requests served at once, each taking `service_time` (so
  C = workers / service_time), then a bounded FIFO queue; past it, a fast 503 `queue-full`.
  A queued request starts when a worker's previous one was due, not when our loop got to
  its timer, so C holds on a busy machine.
- Thrashing: a request's service time is `service_time x (1 + thrash x queued / workers)`,
  taken when it starts, so a long queue lowers real capacity (the metastable trap).
- No cancellation: a client that gave up still has its work done (wasted work).
- Outage switch (admin `POST /admin/outage {"seconds": S}`): for S seconds every request,
  `/healthz` included, gets a fast `500` (`x-backend-reason: outage`). We chose a fast 500 over
  refused connections: it is the "broken" half of "unreachable or broken" (the process is up,
  its own dependency is gone, as in the incident), it answers in well under a millisecond
  (DESIGN.md §3's fast 5xx), and it leaves the admin listener and stats reachable.
- Capacity step (admin `POST /admin/workers {"workers": W, "at": T}`): from the monotonic
  instant T (default: now) the backend has W workers, as when a node of it is lost (fewer) or
  added (more). Requests in service finish where they are; with fewer workers, no new one starts
  until the busy count is under W; with more, queued requests start at once. The step is
  recorded in `/stats` (`steps`: (t, old workers, new workers)).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

STATS_BUCKET = 1.0  # seconds per /stats timeline bucket


@dataclass(frozen=True)
class BackendConfig:
    """How the simulated backend behaves (see the module docstring)."""

    name: str = "backend"
    workers: int = 10
    service_time: float = 0.05
    queue_limit: int = 1000
    thrash: float = 0.5
    jitter: float = 0.1  # service time x U(1 - jitter, 1 + jitter)
    seed: int = 1

    @property
    def capacity(self) -> float:
        """Nominal capacity C in requests per second (no queue, no thrash)."""
        return self.workers / self.service_time


def thrashed_service_time(base: float, thrash: float, queued: int, workers: int) -> float:
    """Service time of a request that starts with `queued` requests waiting behind the workers."""
    return base * (1.0 + thrash * queued / workers)


class _Job:
    __slots__ = ("arrived", "due", "future")

    def __init__(self, arrived: float, future: asyncio.Future[float]) -> None:
        self.arrived = arrived
        self.future = future
        self.due = arrived  # when its service ends (set when it starts)


class Simulator:
    """The worker pool and queue; records what happened for `/stats`."""

    def __init__(self, config: BackendConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.workers = config.workers  # changed by a capacity step (set_workers)
        self.steps: list[tuple[float, int, int]] = []  # (t, old workers, new workers)
        self.busy = 0
        self.queue: deque[_Job] = deque()
        self.outage_until = 0.0
        self.outages: list[tuple[float, float]] = []
        self.first_good_probe: float | None = None
        self.peak_busy = 0
        self.peak_queue = 0
        self.counts = {
            "arrivals": 0,
            "foreign_arrivals": 0,
            "completed": 0,
            "wasted": 0,
            "rejected_full": 0,
            "outage_errors": 0,
        }
        # Raw per-request records (times rounded to 0.1 ms) joined later with the fleet's.
        self.arrivals: list[tuple[float, int]] = []  # (t, foreign 0/1)
        self.completions: list[tuple[float, str, int, int]] = []  # (t, request id, foreign, gone)
        self.rejections: list[tuple[float, int, str]] = []  # (t, foreign, reason)
        self.samples: list[tuple[float, int, int]] = []  # (t, busy, queued)
        self.started_at = clock()
        self.token = _fake_jwt(self.rng)

    # --- the work ---------------------------------------------------------------------------
    def in_outage(self, now: float) -> bool:
        """True while the outage switch is on."""
        return now < self.outage_until

    def set_outage(self, seconds: float) -> None:
        """Fail everything for `seconds` from now."""
        now = self.clock()
        self.outage_until = now + seconds
        self.outages.append((now, now + seconds))
        self.first_good_probe = None

    def health(self) -> bool:
        """Health as /healthz reports it; notes the first good probe after an outage."""
        now = self.clock()
        if self.in_outage(now):
            return False
        if self.outages and self.first_good_probe is None:
            self.first_good_probe = now
        return True

    def admit(self, foreign: bool) -> asyncio.Future[float] | str:
        """Queue one request; returns a future (resolves when served) or a refusal reason."""
        now = self.clock()
        self.counts["arrivals"] += 1
        self.counts["foreign_arrivals"] += foreign
        self.arrivals.append((round(now, 4), int(foreign)))
        if self.in_outage(now):
            self.counts["outage_errors"] += 1
            self.rejections.append((round(now, 4), int(foreign), "outage"))
            return "outage"
        if self.busy >= self.workers and len(self.queue) >= self.config.queue_limit:
            self.counts["rejected_full"] += 1
            self.rejections.append((round(now, 4), int(foreign), "queue-full"))
            return "queue-full"
        job = _Job(now, asyncio.get_running_loop().create_future())
        if self.busy < self.workers:
            self._start(job)
        else:
            self.queue.append(job)
            if len(self.queue) > self.peak_queue:
                self.peak_queue = len(self.queue)
        return job.future

    def _start(self, job: _Job, free_since: float | None = None) -> None:
        """Start serving `job` on a worker free since `free_since` (None: now)."""
        cfg = self.config
        self.busy += 1
        if self.busy > self.peak_busy:
            self.peak_busy = self.busy
        st = thrashed_service_time(cfg.service_time, cfg.thrash, len(self.queue), self.workers)
        if cfg.jitter:
            st *= self.rng.uniform(1.0 - cfg.jitter, 1.0 + cfg.jitter)
        now = self.clock()
        begin = now if free_since is None else min(now, max(free_since, job.arrived))
        job.due = begin + st
        asyncio.get_running_loop().call_later(job.due - now, self.finish, job)

    def finish(self, job: _Job) -> None:
        """A job's service time ran out: answer it and start the next waiting one (public:
        a test holds completions by replacing it)."""
        self.busy -= 1
        if not job.future.done():
            job.future.set_result(self.clock())
        # The worker was free from when this job was due, not from when our loop got to its
        # timer: starting the next one from then keeps C at workers / service_time under
        # load. Timers fire a little late, and chaining from the late time lost that much
        # (`wrk -c24 -d6s` against `python -m loadtest.backend --workers 20 --thrash 0`:
        # 396 of 400 req/s before, 398 after).
        while self.busy < self.workers and self.queue:
            self._start(self.queue.popleft(), job.due)

    def set_workers(self, workers: int) -> None:
        """A capacity step: `workers` from now on. Work in service finishes where it is; with
        more workers, queued requests start at once."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.steps.append((round(self.clock(), 4), self.workers, workers))
        self.workers = workers
        while self.busy < self.workers and self.queue:
            self._start(self.queue.popleft())

    def record_completion(self, t: float, request_id: str, foreign: bool, gone: bool) -> None:
        """A request was served (gone: its client had already left, so the work was wasted)."""
        self.counts["completed"] += 1
        self.counts["wasted"] += gone
        self.completions.append((round(t, 4), request_id[:64], int(foreign), int(gone)))

    def sample(self) -> None:
        """Record busy workers and queue length now (for the timeline)."""
        self.samples.append((round(self.clock(), 4), self.busy, len(self.queue)))

    def timeline(self, bucket: float = STATS_BUCKET) -> dict[str, Any]:
        """Per-interval series since start: arrivals, served, wasted, refused, peak busy/queue."""
        n = int((self.clock() - self.started_at) // bucket) + 1
        series = {
            k: [0.0] * n for k in ("arrivals", "served", "wasted", "refused", "busy", "queue")
        }

        def idx(t: float) -> int:
            return min(n - 1, max(0, int((t - self.started_at) // bucket)))

        for t, _ in self.arrivals:
            series["arrivals"][idx(t)] += 1
        for t, _, _, gone in self.completions:
            series["wasted" if gone else "served"][idx(t)] += 1
        for t, _, _ in self.rejections:
            series["refused"][idx(t)] += 1
        for t, busy, queued in self.samples:
            i = idx(t)
            series["busy"][i] = max(series["busy"][i], busy)
            series["queue"][i] = max(series["queue"][i], queued)
        return {
            "bucket_s": [bucket],
            "t": [self.started_at + i * bucket for i in range(n)],
            **series,
        }

    def stats(self, raw: bool = True) -> dict[str, Any]:
        """What `/stats` reports: config, counters, peaks, a 1 s timeline, raw records."""
        cfg = self.config
        doc = {
            "name": cfg.name,
            "config": asdict(cfg),
            "capacity": cfg.capacity,
            "workers_now": self.workers,
            "steps": self.steps,
            "started_at": self.started_at,
            "now": self.clock(),
            "counts": dict(self.counts),
            "peak_busy": self.peak_busy,
            "peak_queue": self.peak_queue,
            "busy": self.busy,
            "queued": len(self.queue),
            "outages": self.outages,
            "first_good_probe": self.first_good_probe,
            "pid": os.getpid(),
            "timeline": self.timeline(1.0),
        }
        if raw:
            doc["arrivals"] = self.arrivals
            doc["completions"] = self.completions
            doc["rejections"] = self.rejections
            doc["samples"] = self.samples
        return doc


def _fake_jwt(rng: random.Random) -> str:
    """A JWT-shaped access token about the size of a real one (~1.3 kB)."""

    def seg(n: int) -> str:
        return base64.urlsafe_b64encode(rng.randbytes(n)).decode().rstrip("=")

    return f"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{seg(700)}.{seg(256)}"
