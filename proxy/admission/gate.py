"""The admission gate: admit, defer or shed each request; release deferred work in batches.

A facade over pure components, each in its own module:
- `policy.Policy`: the slow path's verdict (admit, queue, refuse and why);
- `refusals.Refuser`: a refusal's status, its booked Retry-After (`pacing.Pacer`), its hold;
- `estimates.Estimates`: the backend's pace, a request's latency, a client's patience;
- `scheduler.queue.TieredQueue` and `scheduler.waits.WaitModel`: waiters, tiers, order, waits;
- `modes.ModeController`, the limiter, `budgets`, `signals`: mode, limit, budgets, health.
The gate owns the accounting they share (in-flight, the limit in force, per-tick counters),
runs the request path and, from the ticker (`control.ticker`), the rounds that fold the
counters in, expire waiters, evaluate the mode and release batches. `/status`, gauges and
operator commands live in `proxy/ops/` and read the gate's public attributes.

`admit` is synchronous and O(1). NORMAL, under the limit and the caller's cap, a first try
from local traffic with no booked slot: the fast path, which touches no queue, calls no clock
and formats nothing. Everything else goes through the policy.

The limit in force (`eff`, its rule in `in_force`) is what RECOVERY releases in batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..contracts import Outcome, Probe, Reason, Refusal, Ticket
from ..control.controller import Controller
from ..control.limit import Limit, make_limiter
from ..control.modes import Mode, ModeController, Transition
from ..control.signals import Patience
from ..control.ticker import Ticker
from ..ops.commands import run_command
from ..ops.metrics import Metrics
from ..ops.status import gate_status
from ..scheduler.tiers import N_PRIO
from ..scheduler.waiter import Waiter
from ..tuning import ADMISSION, AdmissionTuning
from .budgets import LocalRetryBudgets, RetryBudgets
from .callers import Caller, CallerCaps, CallerTable
from .estimates import Estimates
from .in_force import limit_in_force
from .pacing import Pacer
from .policy import ADMIT, QUEUE, REFUSE, Load, Policy, Verdict, count_budget, count_dry_run
from .refusals import Refuser, key_of
from .rounds import Rounds
from .waitroom import WaitRoom

log = logging.getLogger("sluice.gate")


class AdmissionGate:
    """Admission control in front of the upstream (implements contracts.Gate)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        caller_names: list[str],
        clock: Callable[[], float] = time.monotonic,
        budgets: RetryBudgets | None = None,
        caps: CallerCaps | None = None,
        tuning: AdmissionTuning = ADMISSION,
    ) -> None:
        self._clock = clock
        self.tuning = tuning  # (its estimates', refusals', pacer's and budgets')
        now = clock()
        self.metrics = metrics
        self.config = config
        self.started_at = now
        dry = config.modes.protection == "dry-run"
        self.modes = ModeController(config, now)
        # A protection setting (`modes.protection: dry-run`, or the operator's `dry-run`
        # command), not a mode: the modes move as usual, and every verdict is only counted.
        self.dry_run = dry
        self.limiter: Limit = make_limiter(config.limiter, now)
        self.budgets: RetryBudgets = budgets or LocalRetryBudgets(
            config.retry_budget, len(caller_names), now, tuning
        )
        self.pacer = Pacer(config.shedding, len(caller_names), tuning)
        self.refuser = Refuser(config, self.pacer, tuning)
        self.policy = Policy(config)
        self.estimates = Estimates(config, now, tuning)
        self.patience = Patience(config.queue.patience)
        self.control = Controller(
            config, metrics, self.modes, self.limiter, self.estimates, self.patience, now
        )
        self.tally = self.control.tally
        self.room = WaitRoom(
            self,
            config,
            metrics,
            (self.estimates, self.limiter, self.control, self.modes, self.patience),
            clock,
        )
        self.queue = self.room.queue  # (read by views and tests; never replaced)
        self.ticker = Ticker(self, clock)
        self.caller_table = CallerTable(config, caller_names, self.pacer.bookings, caps)
        self.in_flight = 0
        self.eff = self.limiter.limit  # the limit in force
        self.draining = False
        self._fast = not dry
        self.rounds = Rounds(self, now)
        self._configure(config)
        metrics.set_mode(self.modes.state.value)
        metrics.dry_run.set(1 if dry else 0)
        metrics.limit.set(self.limiter.limit)

    # --- views ------------------------------------------------------------------------------
    @property
    def callers(self) -> list[Caller]:
        """Every caller: the configured ones, then the fair buckets."""
        return self.caller_table.all

    @property
    def mode(self) -> Mode:
        """The mode now."""
        return self.modes.state

    @property
    def mode_name(self) -> str:
        """The mode now, by name (for the access log)."""
        return self.modes.state.value

    def expire(self, now: float) -> None:
        """Answer the waiters whose wait runs out before the next tick."""
        self.room.expire(now)

    def next_expiry(self) -> float | None:
        """When the earliest waiter's wait runs out (None: nothing waits)."""
        return self.queue.next_expiry()

    def now(self) -> float:
        """The gate's clock."""
        return self._clock()

    # --- configuration ---------------------------------------------------------------------
    def _configure(self, config: Config) -> None:
        """Cache what the request path reads from the config."""
        self.config = config
        self._budget_on = config.retry_budget.enabled
        self._busy_lag = config.shedding.busy_lag
        self.refuser.configure(config)
        self.policy.configure(config)
        self.estimates.config = config
        self.queue.lifo_after = config.queue.lifo_when_older_than
        self.refresh_estimates(self._clock())

    def refresh_estimates(self, now: float) -> None:
        """Recompute the estimates (the ticker does, every tick)."""
        est = self.estimates
        est.refresh(now, self.limiter, self.control.rates.baseline or 0.0, self.patience.estimate())
        self.queue.on_time_for = est.on_time_for
        self._min_budget = est.min_budget

    def reconfigure(self, config: Config) -> None:
        """Apply a new config atomically; learned limit, budgets, queues and mode are kept.
        The caller table is fixed for the gate's life (a reload that changes it is refused)."""
        now = self._clock()
        table = self.caller_table
        table.reconfigure(config, self.pacer.bookings)
        old = self.config
        self.config = config
        self.pacer.reconfigure(config.shedding, len(table.names))
        self.limiter.reconfigure(config.limiter)
        self.budgets.reconfigure(config.retry_budget, len(table.names), now)
        self.control.reconfigure(old, config, now)
        self.patience.set_prior(config.queue.patience)
        if old.modes.protection != config.modes.protection:
            self.set_dry_run(config.modes.protection == "dry-run", now)
        self._configure(config)
        self.refresh_limit_in_force(now, batch=False)
        self.room.pump(now)

    # --- the request path ------------------------------------------------------------------
    def admit(self, ticket: Ticket) -> Refusal | Waiter | None:
        """Admit now (None, a slot is held), refuse (Refusal), or defer (Waiter, await it)."""
        c = self.caller_table.resolve(ticket.caller_index)
        self.tally.arrivals += 1
        if (
            self._fast
            and self.in_flight < self.eff
            and c.in_flight < c.cap
            and not ticket.is_retry
            and ticket.origin_region is None
            and not c.bookings
        ):
            d = ticket.deadline
            if d is None or d - ticket.arrived >= self._min_budget:
                self.in_flight += 1
                c.in_flight += 1
                ticket.gate_state = c
                if self._budget_on:
                    self.budgets.deposit(c.index)
                return None
        return self._admit_slow(ticket, c)

    def release(self, ticket: Ticket, outcome: Outcome) -> None:
        """Give the slot back, count the upstream's answer by status class and learn from the
        outcome (once per admission; extra calls are ignored)."""
        c = ticket.gate_state
        if c is None:
            return
        ticket.gate_state = None
        self.in_flight -= 1
        c.in_flight -= 1
        if outcome.status is not None:
            self.metrics.upstream_answered(outcome.status)
        if self.control.learn(ticket, outcome, self._clock):
            self.ticker.evaluate_soon()  # a broken run: OUTAGE as soon as this request ends
        if self.queue.total and self.in_flight < self.eff:
            self.room.pump(self._clock())

    def _admit_slow(self, t: Ticket, c: Caller) -> Refusal | Waiter | None:
        now = self._clock()
        if self.draining:
            return self.refuse(t, c, Reason.DRAINING, now)
        # A request its client marks as a first try (attempt 0) is not a return, even when a
        # booking of the same client and path is open: that booking belongs to an earlier
        # request that was served outside its slot (a VM asking for its next token).
        if t.attempt != 0 and c.bookings and self.pacer.redeem(c.index, key_of(t), now):
            t.solicited = True
            self.tally.returns += 1
            self.metrics.slots_redeemed.inc()
        elif t.is_retry:
            self.tally.retries += 1
        mode = self.modes.state
        if not 0 <= t.priority < N_PRIO:
            t.priority = N_PRIO - 1
        v = self._decide(t, c, now, mode)
        if v.decision == QUEUE and self.control.loop.busy:
            # Our own loop is what is saturated: a waiter (its timer, its wake-up, a booked
            # answer if it expires) costs the CPU we lack, and answers read late would teach
            # the limiter a slow backend. Refuse at once, unbooked, with our own reason.
            v = Verdict(REFUSE, Reason.BUSY)
        if self.dry_run:
            count_dry_run(self.metrics, t, v, mode)
            self.take(t, c)
            return None
        if v.decision == ADMIT:
            if t.origin_region is not None:
                self.metrics.spillover_served.inc()
            elif not t.is_retry and not t.solicited and self.room.fresh.tokens >= 1.0:
                self.room.fresh.tokens -= 1.0  # fresh arrivals use their share directly too
            self.take(t, c)
            return None
        if v.decision == REFUSE:
            return self.refuse(t, c, v.reason, now)
        return self._enqueue(t, c, now, v)

    def _decide(self, t: Ticket, c: Caller, now: float, mode: Mode) -> Verdict:
        load = Load(self.in_flight, self.eff, self.queue.total)
        v = self.policy.decide(
            t,
            c,
            now,
            mode,
            load,
            self.estimates,
            self.budgets,
            lambda: self.room.expected_wait(c, self.room.level(t, take=False, now=now), now),
        )
        count_budget(self.metrics, c, v)
        return v

    def _enqueue(self, t: Ticket, c: Caller, now: float, v: Verdict) -> Refusal | Waiter:
        mode = self.modes.state
        w = self.room.enqueue(t, c, now, v.expiry, v.by_deadline, mode)
        depth = self.config.recovery.enter_queue_depth
        if isinstance(w, Waiter) and mode is Mode.NORMAL and self.queue.total == depth:
            # A backlog reopening upstream arrives faster than ticks: judge it as soon as
            # this request is queued, so the rest of the wave is held for RECOVERY instead
            # of shed by NORMAL's short queue.
            self.ticker.evaluate_soon()
        return w

    def take(self, t: Ticket, c: Caller) -> None:
        """Hold a slot for `t` (released by `release`)."""
        self.in_flight += 1
        c.in_flight += 1
        t.gate_state = c

    def refuse(self, t: Ticket, c: Caller, reason: Reason, now: float) -> Refusal:
        """Refuse `t` for `reason` (booking its return where the reason books one)."""
        if reason == Reason.SPILLOVER:
            self.metrics.spillover_refused.inc()
        refusal = self.refuser.refuse(
            t,
            c,
            reason,
            now,
            self.modes,
            self.estimates,
            self.queue.total,
            self.control.rates.baseline or 0.0,
            self.control.loop.stall,
        )
        if self.refuser.books(reason, c):
            self.metrics.slots_booked.inc()
            if self.control.booked(reason, self.queue.total):
                self.ticker.evaluate_soon()
        return refusal

    # --- the limit in force ------------------------------------------------------------------
    def refresh_limit_in_force(self, now: float, batch: bool) -> None:
        """Recompute the limit in force (`in_force`) and whether the fast path is open."""
        mode = self.modes.state
        self.eff = limit_in_force(
            mode, self.limiter.limit, self.in_flight, self.eff, batch, self.config
        )
        self._fast = mode is Mode.NORMAL and not self.draining and not self.dry_run

    # --- the ticker's rounds (`rounds.Rounds`) ------------------------------------------------
    def tick(self, now: float) -> None:
        """One round of background work (the ticker calls it every `batch_interval`)."""
        self.rounds.tick(now)

    def evaluate_now(self, now: float) -> None:
        """Evaluate the mode out of turn (the request path asked: a wave, a broken run)."""
        self.rounds.evaluate(now)
        self.room.pump(now)

    def on_probe(self, ok: bool, now: float) -> None:
        """Record an active health probe's result and re-evaluate the mode at once."""
        self.control.health.probe(ok)
        self.evaluate_now(now)

    def apply_transition(self, tr: Transition, now: float) -> None:
        """Count, log and carry out a mode change decided elsewhere (an operator's)."""
        self.control.apply(tr, now, self.queue.total, self.in_flight)
        self.rounds.after_transition(tr, now)

    # --- lifecycle and operators -------------------------------------------------------------
    async def start(self, probe: Probe) -> None:
        """Start the ticker (batches, mode evaluation, probes) in the running loop."""
        await self.ticker.start(probe)

    async def drain(self) -> None:
        """Refuse new work and answer every waiter with `draining`."""
        self.draining = True
        self._fast = False
        self.room.refuse_all(Reason.DRAINING, self._clock(), keep=lambda c: False)

    async def stop(self) -> None:
        """Stop the ticker and any probe in flight."""
        await self.ticker.stop()

    def set_dry_run(self, on: bool, now: float) -> None:
        """Turn dry run on or off (on: everything waiting is admitted)."""
        if on != self.dry_run:
            log.warning(
                "dry run %s: %s",
                "on" if on else "off",
                "every request is admitted, verdicts only counted"
                if on
                else "verdicts are enforced again",
                extra={"dry_run": on, "mode": self.modes.state.value},
            )
        self.dry_run = on
        self.metrics.dry_run.set(1 if on else 0)
        self.refresh_limit_in_force(now, batch=True)
        if on:
            self.room.admit_all(now)
        self.room.pump(now)

    def command(self, action: str, **params: Any) -> dict[str, Any]:
        """Operator command: `recovery`, `shield` (ttl, allow), `normal`, `dry-run` (on)."""
        return run_command(self, action, params)

    def upstream_refusal(self, ticket: Ticket, status: int) -> Refusal | None:
        """The answer to send instead of an upstream 5xx (None: relay it)."""
        if self.dry_run:
            return None
        return self.refuser.upstream_refusal(status, self.modes, self._clock())

    def calm(self) -> bool:
        """NORMAL and not draining: no surge in hand."""
        return self.modes.state is Mode.NORMAL and not self.draining

    def status(self) -> dict[str, Any]:
        """JSON-able state for the admin /status endpoint."""
        return gate_status(self)
