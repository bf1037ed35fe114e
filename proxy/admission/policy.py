"""The slow path's admission policy: a verdict for a ticket, its caller, the mode and the
estimates.

Pure but for the retry budget's accounting (a withdrawal is the decision itself), and
clock-injected. The order of the checks is the policy: SHIELD allow-list, a cap of 0, an
unmeetable deadline, spillover, the retry budget (work-conserving), a free slot, then a queue
(short in NORMAL and SHIELD, `queue.max_wait` in RECOVERY and OUTAGE, never past the
client's deadline or learnt patience) or a refusal whose Retry-After the gate books.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..config import Config
from ..contracts import Reason, Ticket
from ..control.modes import Mode
from ..ops.metrics import Metrics
from .budgets import RetryBudgets
from .callers import Caller
from .estimates import Estimates

log = logging.getLogger("sluice.gate")

ADMIT, QUEUE, REFUSE = 0, 1, 2
# What the retry budget said (for its metrics).
BUDGET_NONE, BUDGET_ADMITTED, BUDGET_REFUSED = 0, 1, 2


class Verdict(NamedTuple):
    """The decision, the reason it would be refused for (REFUSE and QUEUE: a queued waiter
    that runs out is refused for it; ignored for ADMIT), the queue expiry (QUEUE only),
    whether that expiry is the client's deadline, and what the retry budget said."""

    decision: int
    reason: Reason = Reason.OVERLOAD
    expiry: float = 0.0
    by_deadline: bool = False
    budget: int = BUDGET_NONE


@dataclass(slots=True)
class Load:
    """The gate's load at the moment of the decision."""

    in_flight: int
    eff: int  # the limit in force
    queued: int


class Policy:
    """The admission policy, with what it reads from the config cached."""

    def __init__(self, config: Config) -> None:
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Cache what the policy reads from the config."""
        self.config = config
        self._margin = config.shedding.deadline_margin
        self._spillover = config.region.spillover
        self._spare = config.region.spare_utilisation
        self._budget_on = config.retry_budget.enabled

    def decide(
        self,
        t: Ticket,
        c: Caller,
        now: float,
        mode: Mode,
        load: Load,
        est: Estimates,
        budgets: RetryBudgets,
        expected_wait: Callable[[], float],
    ) -> Verdict:
        """The verdict for `t`; `expected_wait` is its wait if queued (only asked when it
        could be refused for it)."""
        if mode is Mode.SHIELD and not c.allowed:
            return Verdict(REFUSE, Reason.SHIELD)
        if c.cap == 0:
            return Verdict(REFUSE, Reason.CALLER_CAP)
        remaining = math.inf
        if t.deadline is not None:
            remaining = t.deadline - now - self._margin
            if remaining < est.expected_latency:
                return Verdict(REFUSE, Reason.DEADLINE)
        free = load.in_flight < load.eff and c.in_flight < c.cap
        if t.origin_region is not None and self._spillover != "allow":
            return self._spillover_verdict(c, mode, load)
        budget = BUDGET_NONE
        if self._budget_on:
            if t.is_retry and not t.solicited:
                if budgets.try_withdraw(c.index, now):
                    budget = BUDGET_ADMITTED
                elif mode in (Mode.NORMAL, Mode.RECOVERY) and (
                    free or (not load.queued and self.config.queue.max_size > 0)
                ):
                    # Work-conserving: refused only when it would take a slot another
                    # request waits for. Over budget, it may take a free slot, or wait
                    # while nothing else does (in the last tier: whatever arrives next
                    # goes first), where waiting is possible at all.
                    if free:
                        return Verdict(ADMIT, budget=BUDGET_ADMITTED)
                else:
                    return Verdict(REFUSE, Reason.RETRY_BUDGET, budget=BUDGET_REFUSED)
            elif not t.is_retry:
                budgets.deposit(c.index)
        if free:
            return Verdict(ADMIT, budget=budget)
        return self._queue_verdict(t, c, now, mode, remaining, est, expected_wait, budget)

    def _spillover_verdict(self, c: Caller, mode: Mode, load: Load) -> Verdict:
        """Traffic from another region: served only on spare capacity, and only where
        `region.spillover` allows it at all."""
        if (
            self._spillover == "spare"
            and mode is Mode.NORMAL
            and c.in_flight < c.cap
            and load.in_flight < load.eff * self._spare
        ):
            return Verdict(ADMIT)
        return Verdict(REFUSE, Reason.SPILLOVER)

    def _queue_verdict(
        self,
        t: Ticket,
        c: Caller,
        now: float,
        mode: Mode,
        remaining: float,
        est: Estimates,
        expected_wait: Callable[[], float],
        budget: int,
    ) -> Verdict:
        """No free slot: wait as long as the mode's queue allows and the client can, or be
        refused now."""
        short = mode is Mode.NORMAL or mode is Mode.SHIELD
        if short and c.in_flight >= c.cap:
            return Verdict(REFUSE, Reason.CALLER_CAP, budget=budget)
        full_reason = Reason.OUTAGE if mode is Mode.OUTAGE else Reason.OVERLOAD
        q = self.config.queue
        wait = q.normal_max_wait if short else q.max_wait
        by_deadline = False
        if remaining - est.expected_latency < wait:
            wait = remaining - est.expected_latency
            by_deadline = True
        if t.deadline is None:
            # No deadline sent: the client still has one. Answer (with a paced Retry-After)
            # before its learnt patience runs out rather than let it time out on its own.
            implicit = t.arrived + est.patience - now - self._margin - est.expected_latency
            wait = min(wait, implicit)
        if wait <= 0:
            return Verdict(REFUSE, full_reason, budget=budget)
        # Refuse now if the wait would run out anyway (judged optimistically while the pace
        # is only guessed: the waiter is answered when its wait runs out if that was wrong).
        # A solicited return is always given its chance: it comes early in its lane.
        if not t.solicited and mode is not Mode.OUTAGE and expected_wait() > wait:
            return Verdict(REFUSE, full_reason, budget=budget)
        return Verdict(QUEUE, full_reason, now + wait, by_deadline, budget)


def count_budget(metrics: Metrics, c: Caller, v: Verdict) -> None:
    """Count what the retry budget said of a verdict."""
    if v.budget == BUDGET_ADMITTED:
        metrics.retry_admitted[c.label].inc()
    elif v.budget == BUDGET_REFUSED:
        metrics.retry_refused[c.label].inc()


def count_dry_run(metrics: Metrics, t: Ticket, v: Verdict, mode: Mode) -> None:
    """Dry run: count what would have been done (the request is admitted anyway)."""
    if v.decision == REFUSE:
        metrics.dry_run_decision[v.reason].inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "dry-run refusal",
                extra={"reason": v.reason, "caller": t.caller, "mode": mode.value},
            )
    elif v.decision == QUEUE:
        metrics.dry_run_deferrals.inc()
