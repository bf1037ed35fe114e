"""Paced Retry-After: tell shed clients when to come back so the next wave arrives flat.

Returns are booked in a calendar of one-second buckets, each holding as many returns as the
return pace allows: the backend's pace minus the fresh traffic we expect (never below
`min_return_share` of the pace). A booking takes the earliest bucket with room after the work
already queued, and a place inside it spread at that pace, in `slot` (100 ms) steps. So
returns land spread over the expected drain time at the rate the backend can take them; a
bucket left with room (its pace was underestimated, or it is near) is filled before later
ones, so the schedule does not drift away from the present when the estimate changes.

Each booking is remembered for its caller and key as a window [slot - grace, slot + 1 s +
grace]: a client reading only the whole-second `Retry-After` comes back less than a second
after its slot, whatever part of the wait a hold took (`refusals`: the header counts from the
hold's end, and is rounded up from there).
The key is the request's per-call id when it has one, else its fingerprint (caller, client
address, method, path+query). A request of that caller and key arriving inside the window is a
*solicited* return: the gate admits it ahead of the caller's fresh arrivals and never charges
it as a retry. A key may hold several open bookings: token requests are identical for every
pod of an identity, and each refused pod is owed its own return (one booking per key let
each new refusal cancel the previous pod's slot, and returns on time were taken for
retries). A return takes the earliest open slot of its key. Memory is bounded by
`max_bookings`; beyond it Retry-After is still paced, just not remembered.

In a fleet (`fleet.redis`), the bookings other sidecars made are added here as *foreign*
bookings (`add_foreign`), so a client sent back by one sidecar is recognised by whichever one
the balancer hands its return to; a return redeemed elsewhere closes the booking here
(`close`). What this pacer books and redeems is written to its `journal` for the fleet link.
Foreign bookings take no room in the calendar: each sidecar paces by its own backend's share,
and the balancer spreads every sidecar's returns over all of them.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from itertools import count
from typing import Protocol

from ..config import SheddingConfig
from ..tuning import ADMISSION, AdmissionTuning

# Seconds: the `Retry-After` header's resolution (HTTP's delay-seconds are whole). A client
# that reads only it is told a whole number of seconds from when the answer is sent, rounded
# up, at least 1: it comes back less than this after the return it was booked.
RETRY_AFTER_STEP = 1.0

# Paces the calendar remembers its full seconds for: a wave books at one or two paces at a
# time (first tries boosted, returns not), and each mark only saves a look over full seconds.
_MARKS = 8


class BookingJournal(Protocol):
    """Where a fleet's sidecar writes what its pacer did, for its peers (`fleet.journal`)."""

    def booked(self, caller: int, key: int, start: float, end: float) -> None:
        """A return was booked for `caller`'s `key`, welcome from `start` to `end`."""

    def redeemed(self, caller: int, key: int, at: float) -> None:
        """A return of `caller`'s `key` came back in its slot at `at`."""


class Booking:
    """One booked return: its caller and when it may come back."""

    __slots__ = ("caller", "end", "foreign", "live", "start")

    def __init__(self, caller: int, start: float, end: float, foreign: bool = False) -> None:
        self.caller = caller
        self.start = start
        self.end = end
        self.live = True  # False once redeemed or expired
        self.foreign = foreign  # booked by another sidecar of the fleet


class Pacer:
    """Books return slots per caller and recognises requests coming back in them."""

    def __init__(
        self, config: SheddingConfig, callers: int, tuning: AdmissionTuning = ADMISSION
    ) -> None:
        self.config = config
        self._slack = tuning.booking_slack  # heap entries kept past twice the live bookings
        # Per caller, in booking order (for expiry).
        self.bookings: list[deque[Booking]] = [deque() for _ in range(callers)]
        # Open bookings per (caller, key), earliest slot first (used or expired ones linger
        # until popped or pruned: `_entries` counts them all).
        self._open: dict[tuple[int, int], list[tuple[float, int, Booking]]] = {}
        self._entries = 0
        self._seq = count()
        self._live = [0] * callers
        self.total = 0  # live bookings, all callers
        self.booked = 0  # bookings made (counter, for status)
        self.redeemed = 0  # solicited returns recognised (counter)
        self.expired = 0  # bookings whose window passed unused (counter)
        self.foreign = 0  # bookings received from the fleet (counter)
        self.foreign_live = 0  # of `total`, the peers' bookings (their returns may land here)
        self.redeemed_foreign = 0  # solicited returns whose slot a peer booked (counter)
        self.closed = 0  # bookings closed because a peer redeemed them (counter)
        self.journal: BookingJournal | None = None  # set in a fleet
        self._last_due = 0.0  # the latest return time handed out
        n = math.ceil(config.retry_after_max) + 2
        self._occ = [0] * n  # returns booked per one-second bucket (calendar ring)
        self._epoch = [-1] * n  # which absolute second each ring entry holds
        # (return pace, second): every second before it was full at that pace (buckets only
        # fill up), so a booking at no higher pace need not look at them again. Paces
        # descending, seconds ascending, a few entries (`_mark_full`).
        self._marks: list[tuple[float, int]] = []

    def next_free(self, now: float) -> float:
        """Seconds until the latest booked return (0 when none is ahead)."""
        return max(0.0, self._last_due - now)

    def book(
        self,
        caller: int,
        now: float,
        pace: float,
        fresh_rate: float,
        queued: int,
        not_before: float = 0.0,
        key: int = 0,
        remember: bool = True,
    ) -> int:
        """Book a return for `caller`'s request; return the Retry-After in milliseconds.

        `pace` is the backend's learned requests/s, `fresh_rate` the arrivals we expect
        regardless (the frozen baseline), `queued` the work already waiting in front.
        `not_before` pushes the return past a known instant (the end of a SHIELD). `key`
        (the request's call id or fingerprint, 0 = none) is what its return is matched by.
        """
        cfg = self.config
        return_pace = max(pace * cfg.min_return_share, pace - fresh_rate, 1e-3)
        latest = now + cfg.retry_after_max
        start = max(now + max(cfg.retry_after_min, queued / return_pace), not_before)
        at = self._take(start, latest, return_pace)
        slot = cfg.slot
        at = min(latest, math.ceil(at / slot - 1e-9) * slot)
        after = max(at - now, 0.0)
        after_ms = max(1, math.ceil(after * 1000.0 - 1e-6))  # 1.2000000001 s is 1200 ms
        self.booked += 1
        self._last_due = max(self._last_due, at)
        if remember and self.total < cfg.max_bookings:
            grace = cfg.slot_grace
            b = Booking(caller, at - grace, at + RETRY_AFTER_STEP + grace)
            self._remember(b, key)
            if self.journal is not None:
                self.journal.booked(caller, key, b.start, b.end)
        return after_ms

    def _remember(self, b: Booking, key: int) -> None:
        heapq.heappush(self._open.setdefault((b.caller, key), []), (b.start, next(self._seq), b))
        self._entries += 1
        self.bookings[b.caller].append(b)
        self._live[b.caller] += 1
        self.total += 1

    def add_foreign(self, caller: int, key: int, start: float, end: float, now: float) -> bool:
        """Remember a booking another sidecar made (its window on our clock); False when it
        is already over, the caller unknown, or `max_bookings` are remembered."""
        if end < now or not 0 <= caller < len(self.bookings):
            return False
        if self.total >= self.config.max_bookings:
            return False
        self._remember(Booking(caller, start, end, foreign=True), key)
        self.foreign += 1
        self.foreign_live += 1
        return True

    @property
    def own_total(self) -> int:
        """Live bookings this sidecar made (a peer's returns are counted at the peer)."""
        return self.total - self.foreign_live

    def close(self, caller: int, key: int, at: float) -> bool:
        """A peer redeemed a return of `caller`'s `key` at `at`: the earliest booking of that
        key whose window holds `at` is used up here too (never counted as redeemed here)."""
        for _, _, b in sorted(self._open.get((caller, key), ())):
            if b.live and b.start <= at <= b.end:
                self._kill(b)
                self.closed += 1
                return True
        return False

    def _take(self, start: float, latest: float, return_pace: float) -> float:
        """The earliest time at or after `start` in a bucket with room; `latest` when every
        bucket up to the horizon is full (everyone past it is told the maximum)."""
        n = len(self._occ)
        second = max(int(start), self._full_before(return_pace))
        while second <= latest:
            i = second % n
            if self._epoch[i] != second:
                self._epoch[i] = second
                self._occ[i] = 0
            # Places inside a bucket are 1/pace apart; those before `start` are skipped (later
            # bookings start later still, so they could not use them either).
            place = max(self._occ[i], math.ceil((start - second) * return_pace - 1e-9))
            if place < return_pace:
                self._occ[i] = place + 1
                self._mark_full(second, return_pace)
                return min(latest, second + place / return_pace)
            second += 1
        self._mark_full(second, return_pace)
        return latest

    def _full_before(self, return_pace: float) -> int:
        """The first second not known to be full at `return_pace`."""
        before = 0
        for pace, second in self._marks:  # the entries at this pace or higher are a prefix
            if pace < return_pace:
                break
            before = second
        return before

    def _mark_full(self, before: float, return_pace: float) -> None:
        """Every second before `before` is full at `return_pace`. Kept per pace: one mark at
        the highest pace ever booked let seconds filled at a low pace (rebookings just after
        a limit cut) pass for full at a recovered one, so no later booking went back to them
        and their returns came spread thin for seconds while the backend idled (issue 16)."""
        at = int(before)
        marks = self._marks
        k = 0
        while k < len(marks) and marks[k][0] > return_pace:
            k += 1  # higher paces: their seconds are no later (the look started past them)
        j = k
        while j < len(marks) and marks[j][1] <= at:
            j += 1  # this pace's old mark and lower paces' that say less than this one
        marks[k:j] = [(return_pace, at)]
        if len(marks) > _MARKS:
            del marks[0]  # the highest pace's, the least said; dropping one costs a longer look

    def _kill(self, b: Booking) -> None:
        if b.live:
            b.live = False
            self._live[b.caller] -= 1
            self.total -= 1
            if b.foreign:
                self.foreign_live -= 1

    def redeem(self, caller: int, key: int, now: float) -> bool:
        """True (and the booking is used up) when this request is back inside a slot booked
        for its caller and key (its call id or fingerprint; 0 for requests with neither), so
        another request of the same caller cannot take the slot. The earliest open slot of
        the key is taken (gap filling means it need not be the oldest booking)."""
        self._expire(caller, now)
        heap = self._open.get((caller, key))
        if not heap:
            return False
        while heap and (not heap[0][2].live or heap[0][2].end < now):
            heapq.heappop(heap)
            self._entries -= 1
        if not heap or heap[0][0] > now:
            if not heap:
                del self._open[(caller, key)]
            return False
        b = heapq.heappop(heap)[2]
        self._entries -= 1
        if not heap:
            del self._open[(caller, key)]
        self._kill(b)
        self.redeemed += 1
        if b.foreign:
            self.redeemed_foreign += 1
        if self.journal is not None:
            self.journal.redeemed(caller, key, now)
        return True

    def _expire(self, caller: int, now: float) -> None:
        dq = self.bookings[caller]
        while dq and (not dq[0].live or dq[0].end < now):
            b = dq.popleft()
            if b.live:
                self._kill(b)
                if not b.foreign:  # a peer's booking unused here is counted at the peer
                    self.expired += 1

    def prune(self, now: float) -> None:
        """Forget bookings whose window has passed (the gate's ticker calls this)."""
        for caller, dq in enumerate(self.bookings):
            if dq:
                self._expire(caller, now)
        if self._entries > 2 * self.total + self._slack:  # used or expired ones linger
            kept: dict[tuple[int, int], list[tuple[float, int, Booking]]] = {}
            for k, heap in self._open.items():
                live = [e for e in heap if e[2].live]
                if live:
                    heapq.heapify(live)
                    kept[k] = live
            self._open = kept
            self._entries = sum(map(len, kept.values()))

    def by_caller(self) -> dict[int, int]:
        """Live bookings per caller index (only callers with some)."""
        return {i: n for i, n in enumerate(self._live) if n}

    def reconfigure(self, config: SheddingConfig, callers: int) -> None:
        """New slot size, bounds and grace; bookings already made stay valid."""
        self.config = config
        n = math.ceil(config.retry_after_max) + 2
        if n != len(self._occ):
            self._occ = [0] * n
            self._epoch = [-1] * n
        if callers > len(self.bookings):
            extra = callers - len(self.bookings)
            self.bookings.extend(deque() for _ in range(extra))
            self._live.extend([0] * extra)
