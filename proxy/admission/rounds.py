"""The ticker's rounds and the mode changes they bring: the gate's background half (pure).

Every `batch_interval` the ticker (`control.ticker`) calls `tick`: fold the counters into the
signals, expire waiters, close a limiter window, age budgets and slots, evaluate the mode,
release a batch, refresh gauges. A mode is switched only here (or by an operator), never in
the middle of a request: the request path asks the ticker for an out-of-turn evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..contracts import Reason
from ..control.modes import Effect, Mode, Transition
from ..ops.gauges import update_gauges

if TYPE_CHECKING:
    from .gate import AdmissionGate


class Rounds:
    """The gate's rounds (`tick`) and what a mode change does to its queue and limit."""

    def __init__(self, gate: AdmissionGate, now: float) -> None:
        self.gate = gate
        self._last_prune = now

    def tick(self, now: float) -> None:
        """One round of background work."""
        g = self.gate
        control, room, queue = g.control, g.room, g.queue
        ok, waiting = control.fold(now, queue.total)
        room.refill(now)
        control.note_saturation(now, ok, queue.total, g.in_flight, g.eff)
        room.expire(now)
        mode = g.modes.state
        if g.limiter.tick(now, g.in_flight, mode in (Mode.NORMAL, Mode.RECOVERY), waiting):
            g.metrics.limit.set(g.limiter.limit)
        g.refresh_estimates(now)
        if queue.total and mode is not Mode.OUTAGE:
            room.rejudge(now)
        g.budgets.roll(now)
        if now - self._last_prune >= g.tuning.prune_every:
            self._last_prune = now
            g.pacer.prune(now)
            g.caller_table.refresh_caps()
        control.learn_baseline(now, waiting)
        self.evaluate(now)
        room.released = 0
        g.refresh_limit_in_force(now, batch=True)
        room.pump(now)
        if room.released:
            g.metrics.batches.inc()
        update_gauges(g, now)

    def evaluate(self, now: float) -> None:
        """Evaluate the mode, and carry out a change it decides."""
        g = self.gate
        tr = g.control.evaluate(now, g.queue.total, g.in_flight, g.pacer.next_free(now))
        if tr is not None:
            self.after_transition(tr, now)

    def after_transition(self, tr: Transition, now: float) -> None:
        """The queue's part of a mode change: SHIELD's allow-list (everyone else waiting is
        refused), the limit in force, and a probe soon."""
        g = self.gate
        shield = Effect.ALLOW_LIST in tr.effects
        g.caller_table.allow_only(g.modes.shield_allow if shield else frozenset())
        if shield:
            g.room.refuse_all(Reason.SHIELD, now, keep=lambda c: c.allowed)
        g.refresh_limit_in_force(now, batch=True)
        g.ticker.probe_soon(now)
