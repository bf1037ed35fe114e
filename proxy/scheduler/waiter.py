"""A deferred decision its request awaits, and the spreading of refused waiters' wake-ups.

The only asyncio in the scheduler: a waiter is a future. Everything else decides on plain
state and is driven by the gate with an injected clock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol

from ..contracts import Refusal, Ticket
from ..tuning import SCHEDULER, SchedulerTuning

if TYPE_CHECKING:
    from ..admission.callers import Caller
    from .queue import Lane

# Waiter states.
WAITING, ADMITTED, REFUSED, CANCELLED = 0, 1, 2, 3


class WaiterOwner(Protocol):
    """What a waiter reports to: the waiting room that queued it (`admission.waitroom`)."""

    wakeups: Wakeups

    def abandon(self, w: Waiter) -> None:
        """The waiter's client went away: drop it, or hand back a slot just granted."""

    def cancelled_refusal(self) -> Refusal:
        """The answer a cancelled waiter's `wait` returns."""


class Waiter:
    """A deferred decision (contracts.Deferred): await `wait()` for None or a Refusal.

    If the awaiting task is cancelled (the client went away) the entry is removed from its
    queue in O(1) and never forwarded; if a slot had just been granted, it is given back.
    """

    __slots__ = (
        "by_deadline",
        "caller",
        "enqueued",
        "expiry",
        "future",
        "key",
        "lane",
        "owner",
        "result",
        "state",
        "ticket",
    )

    def __init__(
        self,
        owner: WaiterOwner,
        ticket: Ticket,
        lane: Lane,
        key: int,
        now: float,
        expiry: float,
        by_deadline: bool,
    ) -> None:
        self.owner = owner
        self.ticket = ticket
        self.caller: Caller = lane.caller
        self.lane = lane
        self.key = key  # arrival order (a sequence number)
        self.enqueued = now
        self.expiry = expiry
        self.by_deadline = by_deadline  # the expiry is the client's deadline
        self.state = WAITING
        self.result: Refusal | None = None
        self.future: asyncio.Future[None] | None = None

    async def wait(self) -> Refusal | None:
        """Wait for the decision: None means admitted (a slot is held: release it later)."""
        if self.state == WAITING:
            fut = asyncio.get_running_loop().create_future()
            self.future = fut
            try:
                await fut
            except asyncio.CancelledError:
                self.owner.abandon(self)
                raise
        if self.state == ADMITTED:
            return None
        if self.state == CANCELLED:
            return self.owner.cancelled_refusal()
        return self.result

    def cancel(self) -> None:
        """Give up waiting without awaiting (O(1)); a granted slot is handed back."""
        self.owner.abandon(self)

    def resolve(self, state: int, result: Refusal | None, spread: bool = False) -> None:
        """Record the decision and wake the request (`spread`: through `Wakeups`)."""
        self.state = state
        self.result = result
        fut = self.future
        if fut is not None and not fut.done():
            if spread:
                self.owner.wakeups.add(fut)
            else:
                fut.set_result(None)


class Wakeups:
    """Wakes the tasks of refused waiters a chunk (`SchedulerTuning.wake_chunk`) per event-loop
    iteration.

    A wave judged doomed at a tick (or refused by a drain or SHIELD) is thousands of answers
    to write; woken at once they hold the loop for all of them, and the fresh requests read
    meanwhile wait behind. In chunks, the loop polls between them and serves what arrived.
    The answer is decided (state, result, Retry-After) when the waiter is refused; only the
    writing is spread. Waiters answered at their expiry are woken at once: their clients are
    about to give up.
    """

    __slots__ = ("_chunk", "_pending", "_scheduled")

    def __init__(self, tuning: SchedulerTuning = SCHEDULER) -> None:
        self._chunk = tuning.wake_chunk
        self._pending: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    def add(self, fut: asyncio.Future[None]) -> None:
        """Wake `fut`'s waiter in a later iteration (in order of refusal)."""
        self._pending.append(fut)
        if not self._scheduled:
            self._scheduled = True
            fut.get_loop().call_soon(self._run)

    def _run(self) -> None:
        pending = self._pending
        for _ in range(min(self._chunk, len(pending))):
            fut = pending.popleft()
            if not fut.done():  # (its client may have gone meanwhile)
                fut.set_result(None)
        if pending:
            pending[0].get_loop().call_soon(self._run)
        else:
            self._scheduled = False
