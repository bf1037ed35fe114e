"""The tiered queue: one lane per (caller, level), served level by level.

Memory is bounded whatever callers arrive: callers are the configured ones plus the hashed
fair buckets. Entries live in OrderedDicts, so removing a cancelled waiter is O(1) and it is
never forwarded. Expiries sit in a heap with lazy deletion.

Disciplines within a level (`tiers.in_order`):
- one queue across callers (fresh and solicited tiers), in arrival order;
- deficit round-robin over callers by weight (the rest and retry tiers), skipping callers at
  their cap.
Adaptive LIFO (`queue.lifo_when_older_than`, off for solicited returns: their order is the
schedule): once the oldest waiter of a lane or level has waited that long, the newest go
first. The oldest waiters are the likeliest to time out before they are served, and a client's
patience is short; they are answered with a paced Retry-After before they expire, so LIFO costs
them a return trip, not a failure. In a level served as one queue, the waiters still on time
(read within `on_time_for`: one unloaded latency, at least `lifo_after`) keep their order and
only the late ones go after newer arrivals: a busy loop reads a burst together, and plain
newest-first would pass over each of them by every one read after it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

from ..admission.callers import Caller
from ..contracts import Ticket
from ..tuning import SCHEDULER, SchedulerTuning
from .tiers import N_LEVELS, N_PRIO, TIER_SOLICITED, TIERS, in_order, tier_of
from .waiter import WAITING, Waiter, WaiterOwner


class Lane:
    """One caller's waiters at one level (priority class and tier), oldest first."""

    __slots__ = ("active", "caller", "deficit", "level", "lifo", "waiters")

    def __init__(self, caller: Caller, level: int) -> None:
        self.caller = caller
        self.level = level
        self.waiters: OrderedDict[int, Waiter] = OrderedDict()
        self.deficit = 0
        self.active = False
        # Solicited returns keep their order (they were given a time); other tiers may be
        # served newest-first under congestion.
        self.lifo = tier_of(level) != TIER_SOLICITED

    def __len__(self) -> int:
        return len(self.waiters)

    def head(self) -> Waiter:
        """The oldest waiter (the lane is not empty)."""
        return next(iter(self.waiters.values()))

    def pop(self, lifo_after: float, now: float) -> Waiter:
        """The next waiter: the oldest, or the newest once the oldest waited `lifo_after`."""
        if self.late(lifo_after, now):
            return self.waiters.popitem(last=True)[1]
        return self.waiters.popitem(last=False)[1]

    def late(self, lifo_after: float, now: float) -> bool:
        """Adaptive LIFO is on for this lane: its oldest waiter waited `lifo_after`."""
        return self.lifo and 0 < lifo_after < now - self.head().enqueued

    def pop_newest(self) -> Waiter:
        """The newest waiter (the one fair eviction pushes out)."""
        return self.waiters.popitem(last=True)[1]


def read_since(lane: Lane, cutoff: float) -> Iterator[Waiter]:
    """`lane`'s waiters read at or after `cutoff`, newest first: O(those), which the first
    tier's allowance bounds."""
    return itertools.takewhile(lambda w: w.enqueued >= cutoff, reversed(lane.waiters.values()))


def _by_key(w: Waiter) -> int:
    return w.key


class TieredQueue:
    """Waiters by level and caller, their expiries, and the order they are served in."""

    def __init__(self, lifo_after: float, tuning: SchedulerTuning = SCHEDULER) -> None:
        self.lanes: list[dict[int, Lane]] = [{} for _ in range(N_LEVELS)]
        self.active: list[deque[Lane]] = [deque() for _ in range(N_LEVELS)]
        self.active_weight = [0] * N_LEVELS  # weights of the callers in each level's round
        self.total = 0
        self.by_level = [0] * N_LEVELS
        self.lifo_after = lifo_after
        self.on_time_for = lifo_after
        self._heap: list[tuple[float, int, Waiter]] = []
        self._heap_slack = tuning.expiry_slack
        self._seq = 0

    # --- views ------------------------------------------------------------------------
    def by_priority(self) -> list[int]:
        """Waiters per priority class."""
        q = self.by_level
        return [sum(q[p * TIERS : (p + 1) * TIERS]) for p in range(N_PRIO)]

    def by_tier(self) -> list[int]:
        """Waiters per tier, over priority classes."""
        return [sum(self.by_level[tier::TIERS]) for tier in range(TIERS)]

    def above(self, level: int) -> int:
        """Waiters at the levels served before `level`."""
        return sum(self.by_level[:level])

    def next_expiry(self) -> float | None:
        """The earliest expiry on record (it may belong to a waiter already gone)."""
        return self._heap[0][0] if self._heap else None

    @property
    def expiries(self) -> int:
        """Expiry records kept (stale ones included; none once the queue is empty)."""
        return len(self._heap)

    def waiters(self) -> Iterator[Waiter]:
        """Every waiter, level by level."""
        for lanes in self.lanes:
            for lane in lanes.values():
                yield from lane.waiters.values()

    # --- entering and leaving -----------------------------------------------------------
    def push(
        self,
        owner: WaiterOwner,
        t: Ticket,
        c: Caller,
        level: int,
        now: float,
        expiry: float,
        by_deadline: bool,
    ) -> Waiter:
        """Queue `t` at `level` until `expiry` at the latest."""
        lane = self._lane(c, level)
        self._seq += 1
        w = Waiter(owner, t, lane, self._seq, now, expiry, by_deadline)
        lane.waiters[w.key] = w
        c.queued += 1
        self.total += 1
        self.by_level[level] += 1
        heapq.heappush(self._heap, (expiry, w.key, w))
        if len(self._heap) > 2 * self.total + self._heap_slack:  # lazy deletion, bounded
            self._heap = [e for e in self._heap if e[2].state == WAITING]
            heapq.heapify(self._heap)
        return w

    def _lane(self, c: Caller, level: int) -> Lane:
        """`c`'s lane at `level`, created and put in the round-robin if needed."""
        lanes = self.lanes[level]
        lane = lanes.get(c.index)
        if lane is None or lane.caller is not c:
            lane = Lane(c, level)
            lanes[c.index] = lane
        if not lane.active:
            lane.active = True
            lane.deficit = 0
            self.active[level].append(lane)
            self.active_weight[level] += c.weight
        return lane

    def evict_for(self, c: Caller, level: int) -> Waiter | None:
        """Queue full: take out the newest waiter of a lower level (solicited returns are
        never pushed out), else of the longest lane at this level if it is longer than
        `c`'s would be (fair: one caller's burst cannot lock the others out); None if no
        one gives way. O(lanes), on the overloaded path only."""
        mine = self.lanes[level].get(c.index)
        my_len = len(mine) if mine is not None else 0
        longest: Lane | None = None
        for lanes in reversed(self.lanes[level:]):
            for lane in lanes.values():
                if lane.waiters and lane.lifo and (longest is None or len(lane) > len(longest)):
                    longest = lane
            if longest is not None and longest.level > level:
                break  # a lower level gives way first
        if longest is None or (longest.level == level and len(longest) <= my_len + 1):
            return None
        w = longest.pop_newest()
        self._unqueue(w)
        return w

    def remove(self, w: Waiter) -> None:
        """Take a waiting entry out of its lane in O(1)."""
        del w.lane.waiters[w.key]
        self._unqueue(w)

    def _unqueue(self, w: Waiter) -> None:
        """Bookkeeping for a waiter already taken out of its lane's dicts."""
        w.caller.queued -= 1
        self.total -= 1
        self.by_level[w.lane.level] -= 1
        if not self.total:
            self._heap.clear()  # only stale (granted, refused, cancelled) entries are left

    def take_expiring(self, horizon: float) -> list[Waiter]:
        """Take out every waiter whose expiry is at or before `horizon`."""
        heap = self._heap
        expired = []
        while heap and heap[0][0] <= horizon:
            _, _, w = heapq.heappop(heap)
            if w.state == WAITING:
                self.remove(w)
                expired.append(w)
        return expired

    def take_all(self, keep: Callable[[Caller], bool]) -> list[Waiter]:
        """Take out every waiter whose caller `keep` rejects."""
        taken = [
            w
            for lanes in self.lanes
            for lane in lanes.values()
            if not keep(lane.caller)
            for w in lane.waiters.values()
        ]
        for w in taken:
            self.remove(w)
        return taken

    # --- serving ------------------------------------------------------------------------
    def pick(self, now: float) -> Waiter | None:
        """Take out the next waiter to serve: highest level first; within a level, one
        queue across callers or deficit round-robin by weight, skipping callers at their
        cap. Round-robin is O(1) amortised, O(active lanes) when every waiter is capped;
        one queue is O(active lanes)."""
        for p in range(N_LEVELS):
            if not self.by_level[p]:
                continue
            pick = self._pick_in_order if in_order(p) else self._pick_round_robin
            w = pick(p, now)
            if w is not None:
                return w
        return None

    def _pick_round_robin(self, p: int, now: float) -> Waiter | None:
        active = self.active[p]
        skipped = 0
        while active and skipped < len(active):
            lane = active[0]
            if not lane:
                self._deactivate(lane, p)
                continue
            c = lane.caller
            if c.in_flight >= c.cap:
                active.rotate(-1)
                skipped += 1
                continue
            if lane.deficit <= 0:
                lane.deficit += c.weight
            w = lane.pop(self.lifo_after, now)
            lane.deficit -= 1
            if not lane:
                self._deactivate(lane, p)
            elif lane.deficit <= 0:
                active.rotate(-1)
            self._unqueue(w)
            return w
        return None

    def newest_first(self, level: int, now: float) -> bool:
        """Adaptive LIFO for a level served as one queue: on once its oldest waiter has
        waited `lifo_after` (never for solicited returns: their order is the schedule)."""
        if tier_of(level) == TIER_SOLICITED or self.lifo_after <= 0:
            return False
        oldest = min(
            (lane.head() for lane in self.active[level] if lane), key=_by_key, default=None
        )
        return oldest is not None and now - oldest.enqueued > self.lifo_after

    def serve_order(self, level: int, now: float) -> list[Waiter]:
        """The waiters of a level served as one queue, in the order `pick` takes them
        (callers' caps aside): oldest first; under adaptive LIFO, those still on time
        oldest first, then the late ones newest first. O(waiters log waiters)."""
        waiters = sorted(
            (w for lane in self.lanes[level].values() for w in lane.waiters.values()),
            key=_by_key,
        )
        if not self.newest_first(level, now):
            return waiters
        cutoff = now - self.on_time_for
        late = [w for w in waiters if w.enqueued < cutoff]
        late.reverse()
        return [w for w in waiters if w.enqueued >= cutoff] + late

    def on_time_ahead(self, level: int, now: float) -> int:
        """Waiters of a level served as one queue that a newcomer goes behind under
        adaptive LIFO: those still on time."""
        cutoff = now - self.on_time_for
        return sum(1 for lane in self.lanes[level].values() for _ in read_since(lane, cutoff))

    def _pick_in_order(self, p: int, now: float) -> Waiter | None:
        """The next waiter of a level served as one queue across callers (skipping callers
        at their cap): the oldest; under adaptive LIFO the oldest still on time (read
        within `on_time_for`), else the newest. O(active lanes + waiters on time)."""
        active = self.active[p]
        oldest: Lane | None = None
        newest: Lane | None = None
        lanes: list[Lane] = []
        for lane in list(active):
            if not lane:
                self._deactivate(lane, p)
                continue
            c = lane.caller
            if c.in_flight >= c.cap:
                continue
            lanes.append(lane)
            if oldest is None or next(iter(lane.waiters)) < next(iter(oldest.waiters)):
                oldest = lane
            if newest is None or next(reversed(lane.waiters)) > next(reversed(newest.waiters)):
                newest = lane
        if oldest is None or newest is None:
            return None
        if oldest.late(self.lifo_after, now):
            # A request read late (our loop was busy reading a wave) is not passed over
            # by every newer one: while it is on time it keeps its place.
            cutoff = now - self.on_time_for
            first: Waiter | None = None
            for lane in lanes:
                for w in read_since(lane, cutoff):  # newest first: the last is its oldest
                    if first is None or w.key < first.key:
                        first = w
            if first is not None:
                del first.lane.waiters[first.key]
                w = first
            else:
                w = newest.waiters.popitem(last=True)[1]
        else:
            w = oldest.waiters.popitem(last=False)[1]
        self._unqueue(w)
        return w

    def _deactivate(self, lane: Lane, p: int) -> None:
        """Take an emptied lane out of its level's round (O(1) at the head)."""
        active = self.active[p]
        if active[0] is lane:
            active.popleft()
        else:
            active.remove(lane)
        lane.active = False
        lane.deficit = 0
        self.active_weight[p] -= lane.caller.weight
