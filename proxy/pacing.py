"""Paced Retry-After: tell shed clients when to come back so the next wave arrives flat.

Return times are handed out from one cursor that advances by 1 / (return pace) per booking,
where the return pace is the backend's learned pace minus the fresh traffic we expect (never
below `min_return_share` of the pace). So returns land spread over the expected drain time at
the rate the backend can take them, after the work already queued, in `slot` (100 ms) steps.

Each booking is remembered for its caller as a window [slot - grace, latest - grace] where
`latest` is when a client reading only the whole-second `Retry-After` would come back. A
request from that caller arriving inside the window is a *solicited* return: the gate admits
it ahead of the caller's fresh arrivals and never charges it as a retry. Memory is bounded by
`max_bookings`; beyond it Retry-After is still paced, just not remembered.
"""

from __future__ import annotations

import math
from collections import deque

from .config import SheddingConfig

Booking = tuple[float, float]  # (window start, window end), monotonic seconds


class Pacer:
    """Books return slots per caller and recognises callers coming back in them."""

    def __init__(self, config: SheddingConfig, callers: int) -> None:
        self.config = config
        self.bookings: list[deque[Booking]] = [deque() for _ in range(callers)]
        self.total = 0  # bookings remembered, all callers
        self.booked = 0  # bookings made (counter, for status)
        self.redeemed = 0  # solicited returns recognised (counter)
        self.expired = 0  # bookings whose window passed unused (counter)
        self._cursor = 0.0  # next free return time

    def next_free(self, now: float) -> float:
        """Seconds until the next unbooked return time (0 when nothing is booked ahead)."""
        return max(0.0, self._cursor - now)

    def book(
        self,
        caller: int,
        now: float,
        pace: float,
        fresh_rate: float,
        queued: int,
        not_before: float = 0.0,
        remember: bool = True,
    ) -> int:
        """Book a return for `caller`; return the Retry-After in milliseconds.

        `pace` is the backend's learned requests/s, `fresh_rate` the arrivals we expect
        regardless (the frozen baseline), `queued` the work already waiting in front.
        `not_before` pushes the return past a known instant (the end of a SHIELD).
        """
        cfg = self.config
        return_pace = max(pace * cfg.min_return_share, pace - fresh_rate, 1e-3)
        start = max(now + cfg.retry_after_min, now + queued / return_pace, not_before)
        latest = now + cfg.retry_after_max
        at = max(self._cursor, start)
        if at <= latest:
            self._cursor = at + 1.0 / return_pace
        else:
            at = latest  # saturated: everyone past the horizon is told the maximum
        slot = cfg.slot
        at = min(latest, math.ceil(at / slot - 1e-9) * slot)
        after = max(at - now, 0.0)
        after_ms = max(1, math.ceil(after * 1000.0 - 1e-6))  # 1.2000000001 s is 1200 ms
        self.booked += 1
        if remember and self.total < cfg.max_bookings:
            header_s = max(1, math.ceil(after_ms / 1000))  # what a Retry-After-only client reads
            grace = cfg.slot_grace
            self.bookings[caller].append((at - grace, now + max(after, header_s) + grace))
            self.total += 1
        return after_ms

    def redeem(self, caller: int, now: float) -> bool:
        """True (and the booking is used up) when `caller` is inside one of its slots."""
        dq = self.bookings[caller]
        while dq and dq[0][1] < now:
            dq.popleft()
            self.total -= 1
            self.expired += 1
        if dq and dq[0][0] <= now:
            dq.popleft()
            self.total -= 1
            self.redeemed += 1
            return True
        return False

    def prune(self, now: float) -> None:
        """Forget bookings whose window has passed (the gate's ticker calls this)."""
        for dq in self.bookings:
            while dq and dq[0][1] < now:
                dq.popleft()
                self.total -= 1
                self.expired += 1

    def by_caller(self) -> dict[int, int]:
        """Bookings remembered per caller index (only callers with some)."""
        return {i: len(dq) for i, dq in enumerate(self.bookings) if dq}

    def reconfigure(self, config: SheddingConfig, callers: int) -> None:
        """New slot size, bounds and grace; bookings already made stay valid."""
        self.config = config
        if callers > len(self.bookings):
            self.bookings.extend(deque() for _ in range(callers - len(self.bookings)))
