"""A closed loop in front of a worker-pool backend, on a fake clock, for the limiters' tests.

Requests are discrete: work always waits (or `offered` caps what is in flight), a request is
sent as soon as in-flight is under the limit, the backend serves its arrivals first come first
served on `workers` workers of `service` seconds, slower by `thrash` x (its queue / workers)
(the load-test simulator's model), and an answer is read `delay` seconds late when our own
event loop is busy: its latency looks that much longer, its slot is held that much longer,
and its slack (`Outcome.slack`) says so, as the arrival heartbeat would (`slack_excess`
more: the heartbeat's bound is not exact). The loop feeds the
limiter what the gate would: every `tick` seconds the answers since the last one, the clean
ones counted against `measuring_since` when each was read, and closes its windows.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from proxy.config import LimiterConfig
from proxy.control.limit import Limit


def limiter_config(**kw: object) -> LimiterConfig:
    """The replay's limiter bounds (loadtest/scenarios/reopen.sluice.yaml), `kw` on top."""
    base: dict[str, object] = {
        "initial": 16,
        "floor": 4,
        "ceiling": 1000,
        "latency_tolerance": 1.05,
        "slow_start_factor": 1.5,
    }
    base.update(kw)
    return LimiterConfig.model_validate(base)


@dataclass
class Backend:
    """`workers` x `service` s, first come first served, thrashing with its own queue."""

    workers: int
    service: float
    thrash: float = 0.0
    _free: list[float] = field(default_factory=list)  # when each worker is next free
    _starts: list[float] = field(default_factory=list)  # start times of requests not started

    def __post_init__(self) -> None:
        self._free = [0.0] * self.workers

    def resize(self, workers: int, now: float) -> None:
        """A capacity step: more workers are free at once; fewer leave when next free."""
        free = sorted(self._free)
        if workers > len(free):
            free += [now] * (workers - len(free))
        else:
            free = free[:workers]
        self._free = free
        self.workers = workers

    def due(self, now: float) -> float:
        """When a request arriving `now` is answered."""
        self._starts = [s for s in self._starts if s > now]
        start = max(now, min(self._free))
        queued = len(self._starts)
        took = self.service * (1.0 + self.thrash * queued / self.workers)
        self._free.remove(min(self._free))
        self._free.append(start + took)
        if start > now:
            self._starts.append(start)
        return start + took


@dataclass
class Loop:
    """The gate's side of the closed loop (see the module docstring)."""

    lim: Limit
    backend: Backend
    t: float = 0.0
    delay: float = 0.0  # our own loop's lateness in reading each answer
    # How much the slack overstates that lateness: the heartbeat bounds it from above.
    slack_excess: float = 0.0
    offered: int | None = None  # at most this many in flight (None: work always waits)
    pushback: float = 0.0  # share of answers that are 429s
    step: float = 0.005
    tick: float = 0.1
    _in_flight: list[tuple[float, float]] = field(default_factory=list)  # (read at, sent)
    _since_tick: float = 0.0
    _tally: list[float] = field(default_factory=lambda: [0, 0.0, 0, 0.0, 0.0, 0])
    _owed: float = 0.0

    def run(self, seconds: float) -> list[int]:
        """Run for `seconds`; the limit in force after each tick."""
        limits = []
        for _ in range(round(seconds / self.step)):
            self.t += self.step
            self._read()
            self._send()
            self._since_tick += self.step
            if self._since_tick >= self.tick - 1e-9:
                self._since_tick = 0.0
                self._feed()
                limits.append(self.lim.limit)
        return limits

    def _read(self) -> None:
        tally, t = self._tally, self.t
        while self._in_flight and self._in_flight[0][0] <= t:
            read, sent = heapq.heappop(self._in_flight)
            self._owed += self.pushback
            if self._owed >= 1.0:
                self._owed -= 1.0
                tally[5] += 1
                continue
            latency = read - sent
            tally[0] += 1
            tally[1] += latency
            since = self.lim.measuring_since
            if since is not None and sent >= since:
                tally[2] += 1
                tally[3] += latency
                tally[4] += min(latency, self.delay + self.slack_excess)

    def _send(self) -> None:
        cap = self.lim.limit if self.offered is None else min(self.lim.limit, self.offered)
        while len(self._in_flight) < cap:
            read = self.backend.due(self.t) + self.delay
            heapq.heappush(self._in_flight, (read, self.t))

    def _feed(self) -> None:
        ok, lat, clean, clean_lat, slack, push = self._tally
        self.lim.add(int(ok), lat, int(push), 0, int(clean), clean_lat, slack)
        if self.delay:
            self.lim.note_lag(self.delay)
        self._tally = [0, 0.0, 0, 0.0, 0.0, 0]
        self.lim.tick(self.t, len(self._in_flight), waiting=self.offered is None)
