"""The waiting room: where the gate's deferred requests wait, and how they leave.

Glue between the gate and the scheduler: which tier a ticket waits in (the fresh allowance),
queueing with fair eviction when full, granting waiters while the limit in force has room,
and answering the waiters whose wait ran out or can no longer be met (with a refusal the gate
builds). It owns its waiters (`scheduler.waiter.WaiterOwner`): a client that goes away takes
its waiter out in O(1), or hands back the slot it had just been granted.

A waiter is answered before its deadline (`x-request-timeout-ms`, minus the margin and
the expected latency) or, without one, before its client's patience runs out (learnt from the
clients that gave up), with a paced Retry-After: the client holds the backlog, not us, and it
never times out on its own. A newcomer whose expected wait already exceeds that is refused at
once; each tick, waiters that can no longer be served in time are answered at once; and a
waiter is sent only with at least the expected latency (as learnt since it was queued) left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..config import Config
from ..contracts import Outcome, Reason, Refusal, Ticket
from ..control.controller import Controller
from ..control.limit import Limit
from ..control.modes import Mode, ModeController
from ..control.signals import Patience
from ..ops.metrics import Metrics
from ..scheduler.queue import TieredQueue
from ..scheduler.tiers import TIER_FRESH, TIER_REST, TIER_RETRY, TIER_SOLICITED, level_of
from ..scheduler.waiter import ADMITTED, CANCELLED, REFUSED, WAITING, Waiter, Wakeups
from ..scheduler.waits import WaitModel
from ..tuning import SCHEDULER, SchedulerTuning
from .callers import Caller
from .estimates import Estimates
from .fresh import FreshAllowance

_CANCELLED_OUTCOME = Outcome(None, 0.0, "cancelled")


class Host(Protocol):
    """The gate, as the waiting room sees it: slots, refusals and releases."""

    in_flight: int
    eff: int  # the limit in force

    def take(self, t: Ticket, c: Caller) -> None:
        """Hold a slot for `t`."""

    def refuse(self, t: Ticket, c: Caller, reason: Reason, now: float) -> Refusal:
        """Refuse `t` for `reason`, its return booked where the reason books one."""

    def release(self, ticket: Ticket, outcome: Outcome) -> None:
        """Give back `ticket`'s slot."""


class WaitRoom:
    """Deferred requests of one gate: their queue, wait model and wake-ups."""

    def __init__(
        self,
        host: Host,
        config: Config,
        metrics: Metrics,
        parts: tuple[Estimates, Limit, Controller, ModeController, Patience],
        clock: Callable[[], float],
        tuning: SchedulerTuning = SCHEDULER,
    ) -> None:
        self.host = host
        self.config = config
        self.metrics = metrics
        self.estimates, self.limiter, self.control, self.modes, self.patience = parts
        self._clock = clock
        self.queue = TieredQueue(config.queue.lifo_when_older_than, tuning)
        self.waits = WaitModel(self.queue)
        self.wakeups = Wakeups(tuning)
        self.fresh = FreshAllowance(clock())
        self.released = 0  # granted in RECOVERY since the counter was last cleared

    # --- where a ticket waits ----------------------------------------------------------------
    def level(self, t: Ticket, take: bool, now: float) -> int:
        """The queue level of a ticket: its priority class, then its tier. A fresh arrival
        gets the first tier while fresh arrivals stay within the baseline rate (`take`
        spends the token)."""
        if t.solicited:
            tier = TIER_SOLICITED
        elif t.is_retry:
            tier = TIER_RETRY
        elif self.fresh.tokens >= 1.0 or self.refill(now) >= 1.0:
            tier = TIER_FRESH
            if take:
                self.fresh.tokens -= 1.0
        else:
            tier = TIER_REST
        return level_of(t.priority, tier)

    def refill(self, now: float) -> float:
        """Accrue the fresh allowance up to `now`; returns its tokens."""
        est = self.estimates
        return self.fresh.refill(now, est.fresh_rate, est.fresh_burst)

    def expected_wait(self, c: Caller, level: int, now: float) -> float:
        """The wait model's estimate for a newcomer of `c` at `level`."""
        est = self.estimates
        return self.waits.newcomer(
            c,
            level,
            now,
            max(est.pace, 1e-3),
            self.level_pace(level),
            est.cap_latency(self.limiter),
        )

    def level_pace(self, level: int) -> float:
        """Requests/s the waiters of `level` can expect (`Estimates.level_pace`)."""
        return self.estimates.level_pace(level, self.control.rates.baseline or 0.0)

    # --- entering ------------------------------------------------------------------------------
    def enqueue(
        self, t: Ticket, c: Caller, now: float, expiry: float, by_deadline: bool, mode: Mode
    ) -> Refusal | Waiter:
        """Queue `t` until `expiry` at the latest; full, a lower or longer lane gives way,
        or `t` is refused."""
        queue = self.queue
        if queue.total >= self.config.queue.max_size and not self._make_room(
            c, self.level(t, take=False, now=now), now
        ):
            reason = Reason.OUTAGE if mode is Mode.OUTAGE else Reason.OVERLOAD
            return self.host.refuse(t, c, reason, now)
        w = queue.push(self, t, c, self.level(t, take=True, now=now), now, expiry, by_deadline)
        self.control.backlog += 1
        return w

    def _make_room(self, c: Caller, level: int, now: float) -> bool:
        """Queue full: refuse the waiter that gives way to `c`'s (if any does)."""
        w = self.queue.evict_for(c, level)
        if w is None:
            return False
        self._refuse(w, Reason.OVERLOAD, now)
        return True

    # --- leaving --------------------------------------------------------------------------------
    def _finish(
        self, w: Waiter, state: int, result: Refusal | None, now: float, spread: bool = False
    ) -> None:
        """Resolve a waiter; `spread` (a refusal among many, far from its expiry) wakes it
        through `Wakeups`, a chunk per loop iteration."""
        self.metrics.queue_wait.observe(max(0.0, now - w.enqueued))
        w.resolve(state, result, spread)

    def _refuse(self, w: Waiter, reason: Reason, now: float, spread: bool = False) -> None:
        self._finish(w, REFUSED, self.host.refuse(w.ticket, w.caller, reason, now), now, spread)

    def _admit(self, w: Waiter, now: float) -> None:
        self.host.take(w.ticket, w.caller)
        self._finish(w, ADMITTED, None, now)

    def pump(self, now: float) -> int:
        """Grant waiters while the limit in force has room; returns how many."""
        granted = 0
        queue, host = self.queue, self.host
        # What a request sent now needs of its deadline: the expected latency is learnt since
        # it was queued (timeouts included), so its expiry may no longer leave enough.
        needs = self.config.shedding.deadline_margin + self.estimates.expected_latency
        while queue.total and host.in_flight < host.eff:
            w = queue.pick(now)
            if w is None:
                break
            deadline = w.ticket.deadline
            if deadline is not None and deadline - now < needs:
                # Sent, it would be answered after its client left: the backend would work
                # for no one, and hold the slot meanwhile. Its return is booked instead.
                self._refuse(w, Reason.DEADLINE, now)
                continue
            self._admit(w, now)
            granted += 1
        if granted and self.modes.state is Mode.RECOVERY:
            self.metrics.batch_requests.inc(granted)
            self.released += granted
        return granted

    def expire(self, now: float) -> None:
        """Answer the waiters whose wait runs out before the next tick (plus our last
        stall: a waiter read late is older to its client than to us) now, rather than a tick
        late (after the client's own timeout)."""
        horizon = now + self.config.recovery.batch_interval + self.control.loop.stall
        expired = self.queue.take_expiring(horizon)
        # Answered only once all are out of the queue, so each one's return is booked
        # behind the others' (not behind a queue they are no longer in).
        for w in expired:
            c = w.caller
            if w.by_deadline:
                reason = Reason.DEADLINE
            elif c.in_flight >= c.cap:
                reason = Reason.CALLER_CAP
            elif self.modes.state is Mode.OUTAGE:
                reason = Reason.OUTAGE
            else:
                reason = Reason.OVERLOAD
            self._refuse(w, reason, now)

    def rejudge(self, now: float) -> None:
        """Answer now the waiters that, by the wait model, cannot be served before their
        expiry: at once and with a paced Retry-After, rather than all together when their
        waits run out. With the pace only guessed, the guess (unboosted) is used: a wave
        must not be held to its expiry and answered all at once."""
        est = self.estimates
        doomed = self.waits.doomed(
            now,
            max(est.pace, 1e-3),
            self.level_pace,
            est.cap_latency(self.limiter),
            self.control.loop.stall,
        )
        for w in doomed:
            self.queue.remove(w)
        for w in doomed:
            c = w.caller
            reason = Reason.CALLER_CAP if c.in_flight >= c.cap else Reason.OVERLOAD
            self._refuse(w, reason, now, spread=True)

    def refuse_all(self, reason: Reason, now: float, keep: Callable[[Caller], bool]) -> int:
        """Answer every waiter whose caller `keep` rejects with `reason` (drain, SHIELD)."""
        victims = self.queue.take_all(keep)
        for w in victims:
            self._refuse(w, reason, now, spread=True)
        return len(victims)

    def admit_all(self, now: float) -> None:
        """Admit every waiter (dry run admits everything, including what was waiting)."""
        for w in self.queue.take_all(lambda c: False):
            self._admit(w, now)

    # --- WaiterOwner -----------------------------------------------------------------------------
    def abandon(self, w: Waiter) -> None:
        """The client went away: drop its waiter, or hand back a slot just granted."""
        if w.state == WAITING:
            self.queue.remove(w)
            w.state = CANCELLED
            now = self._clock()
            self.metrics.queue_wait.observe(max(0.0, now - w.enqueued))
            if w.ticket.deadline is None:
                self.patience.observe(now - w.ticket.arrived)
        elif w.state == ADMITTED:
            w.state = CANCELLED
            self.host.release(w.ticket, _CANCELLED_OUTCOME)

    def cancelled_refusal(self) -> Refusal:
        """The answer a cancelled waiter's `wait` returns (its client is gone)."""
        status = self.config.shedding.overload_status
        return Refusal(Reason.OVERLOAD, status, 0)
