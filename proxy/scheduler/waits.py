"""The one wait model: how long a waiter will wait, for newcomers and for those queued.

A level drains at its pace (`level_pace`) after every level above it (at the whole pace). A
level served as one queue serves a waiter after those placed ahead of it; a round-robin level
serves a caller's lane at its weighted share; a capped caller is served no faster than its
slots turn over (cap / latency). The same two formulas answer both questions: the expected
wait of a newcomer (refused at once if it would outlast its wait) and, per tick, which waiters
can no longer be served before their expiry (answered now, with a paced Retry-After, rather
than all together when their waits run out).
"""

from __future__ import annotations

from collections.abc import Callable

from ..admission.callers import NO_CAP, Caller
from .queue import TieredQueue
from .tiers import N_LEVELS, in_order
from .waiter import Waiter

_MIN_RATE = 1e-3  # requests/s: a guard against dividing by zero, not tuning


def in_order_wait(place: int, mine: int, pace: float, c: Caller, latency: float) -> float:
    """Served as one queue: the `place`-th at `pace`, and, for a capped caller, no sooner
    than its slots turn over for the `mine`-th of its own."""
    wait = place / pace
    if c.cap < NO_CAP:
        wait = max(wait, mine * latency / max(c.cap, _MIN_RATE))
    return wait


def share_rate(pace: float, c: Caller, weights: int, latency: float) -> float:
    """Round-robin: the caller's weighted share of `pace`, at most what its cap turns over."""
    rate = pace * c.weight / weights
    if c.cap < NO_CAP:
        rate = min(rate, c.cap / latency)
    return max(rate, _MIN_RATE)


class WaitModel:
    """Expected waits in a `TieredQueue` at the paces the gate estimates."""

    def __init__(self, queue: TieredQueue) -> None:
        self.queue = queue

    def newcomer(
        self,
        c: Caller,
        level: int,
        now: float,
        pace: float,
        level_pace: float,
        latency: float,
    ) -> float:
        """Expected wait of a new waiter of `c` at `level`: behind the waiters in front of
        it (under adaptive LIFO: only those on time in a single queue, none in a lane),
        after every level above."""
        q = self.queue
        above = q.above(level) / pace
        lane = q.lanes[level].get(c.index)
        if in_order(level):
            ahead = q.by_level[level]
            if q.newest_first(level, now):
                ahead = q.on_time_ahead(level, now)
            mine = 1 if ahead == 0 or lane is None else len(lane) + 1
            return in_order_wait(ahead + 1, mine, level_pace, c, latency) + above
        # Under adaptive LIFO a newcomer is served first: it pushes the oldest waiters past
        # their expiry instead, and `doomed` answers those at the next tick.
        ahead = 0
        if lane is not None and lane.waiters and not lane.late(q.lifo_after, now):
            ahead = len(lane)
        weights = q.active_weight[level]
        if lane is None or not lane.active:
            weights += c.weight
        rate = share_rate(level_pace, c, max(weights, c.weight), latency)
        return (ahead + 1) / rate + above

    def doomed(
        self,
        now: float,
        pace: float,
        level_pace: Callable[[int], float],
        latency: float,
        slack: float,
    ) -> list[Waiter]:
        """The waiters that, in serving order, cannot be served `slack` before their
        expiry. O(queued)."""
        q = self.queue
        doomed: list[Waiter] = []
        above = 0
        for level in range(N_LEVELS):
            n_level = q.by_level[level]
            if not n_level:
                continue
            base = above / pace
            if in_order(level):
                self._doomed_in_order(level, level_pace(level), base, now, latency, slack, doomed)
            else:
                weights = max(q.active_weight[level], 1)
                for lane in q.lanes[level].values():
                    if not lane.waiters:
                        continue
                    rate = share_rate(level_pace(level), lane.caller, weights, latency)
                    ws = list(lane.waiters.values())
                    if lane.late(q.lifo_after, now):
                        ws.reverse()  # served newest first
                    for k, w in enumerate(ws):
                        if now + base + (k + 1) / rate > w.expiry - slack:
                            doomed.append(w)
            above += n_level
        return doomed

    def _doomed_in_order(
        self,
        level: int,
        pace: float,
        base: float,
        now: float,
        latency: float,
        slack: float,
        doomed: list[Waiter],
    ) -> None:
        """A level served as one queue: a waiter's wait is its place in that order, counting
        only those in front that will not be answered now."""
        placed = 0
        per_caller: dict[int, int] = {}
        for w in self.queue.serve_order(level, now):
            c = w.caller
            mine = per_caller.get(c.index, 0) + 1
            if now + base + in_order_wait(placed + 1, mine, pace, c, latency) > w.expiry - slack:
                doomed.append(w)
                continue
            placed += 1
            if c.cap < NO_CAP:
                per_caller[c.index] = mine
