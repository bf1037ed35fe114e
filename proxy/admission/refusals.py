"""Refusals: the status for a reason, the Retry-After booked for it, and its hold.

Pure and clock-injected. A booked refusal takes a return slot from the pacer's calendar (the
work queued ahead served first, at the booking pace less the baseline); an unbooked one says
`shedding.retry_after_unbooked`. Paced refusals are answered after a hold (HAProxy's tarpit):
a client that retries without waiting comes back once per hold instead of once per round
trip, and one that honours Retry-After loses nothing (it counts from the end of the hold).
"""

from __future__ import annotations

import math

from ..config import Config
from ..contracts import Reason, Refusal, Ticket
from ..control.modes import Mode, ModeController
from ..tuning import ADMISSION, AdmissionTuning
from .callers import Caller
from .estimates import Estimates
from .pacing import Pacer

# Reasons whose Retry-After books no slot: the client should go elsewhere (spillover,
# draining), or we cannot say when there will be room (busy: our own loop, not the backend,
# is saturated).
UNBOOKED = frozenset({Reason.SPILLOVER, Reason.DRAINING, Reason.BUSY})
# Booked answers that are held: the request cannot be served now, the client has nowhere
# else to go, and its return is booked (not `deadline`: there is no time left to hold; not
# `shield`: an operator's action is answered at once).
HELD = frozenset({Reason.RETRY_BUDGET, Reason.OVERLOAD, Reason.OUTAGE, Reason.CALLER_CAP})
# Held answers are spread by the golden ratio's low-discrepancy sequence: deterministic,
# and no two answers of a wave held alike.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def key_of(t: Ticket) -> int:
    """What a return slot booked for `t` is matched by: its call id, else its fingerprint."""
    return t.call_key or t.fingerprint


class Refuser:
    """Builds refusals; books their returns on the pacer's calendar. How long a refusal is
    held: `tuning.AdmissionTuning`'s `hold_*` (why each value: docs/tuning.md)."""

    def __init__(self, config: Config, pacer: Pacer, tuning: AdmissionTuning = ADMISSION) -> None:
        self.pacer = pacer
        self.tuning = tuning
        self._hold_phase = 0.0
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Cache what refusals read from the config."""
        self.config = config
        self._overload_status = config.shedding.overload_status

    def status_for(self, reason: Reason) -> int:
        """The HTTP status a refusal for `reason` is sent with."""
        if reason == Reason.OVERLOAD:
            return self._overload_status
        if reason is Reason.CALLER_CAP or reason is Reason.RETRY_BUDGET:
            return 429
        if reason == Reason.DEADLINE:
            return 504
        return 503

    def books(self, reason: Reason, c: Caller) -> bool:
        """Whether a refusal for `reason` books a return slot."""
        return reason not in UNBOOKED and not (reason == Reason.CALLER_CAP and c.cap == 0)

    def refuse(
        self,
        t: Ticket,
        c: Caller,
        reason: Reason,
        now: float,
        modes: ModeController,
        est: Estimates,
        queued: int,
        baseline: float,
        stall: float,
    ) -> Refusal:
        """The refusal of `t` for `reason`, its return booked where it books one."""
        sh = self.config.shedding
        if not self.books(reason, c):
            # A cap of 0 will refuse it again: come late. The rest cannot say when.
            later = sh.retry_after_unbooked if reason in UNBOOKED else sh.retry_after_max
            return Refusal(reason, self.status_for(reason), _ms(later))
        ms = self._book(t, c, reason, now, modes, est, queued, baseline)
        if reason in HELD and sh.hold_max > 0:
            return self._held(t, reason, ms, now, est, stall)
        return Refusal(reason, self.status_for(reason), ms)

    def upstream_refusal(self, status: int, modes: ModeController, now: float) -> Refusal | None:
        """In OUTAGE, the reason table's `outage` instead of an upstream 5xx,
        unbooked, not before the outage is expected to end (None: relay the answer)."""
        if status < 500 or modes.state is not Mode.OUTAGE:
            return None
        sh = self.config.shedding
        left = modes.expected_outage_left(now)
        ms = _ms(min(max(sh.retry_after_unbooked, left), sh.retry_after_max))
        return Refusal(Reason.OUTAGE, 503, ms)

    def _book(
        self,
        t: Ticket,
        c: Caller,
        reason: Reason,
        now: float,
        modes: ModeController,
        est: Estimates,
        queued: int,
        baseline: float,
    ) -> int:
        sh = self.config.shedding
        outage = modes.state is Mode.OUTAGE
        not_before = modes.shield_until if reason == Reason.SHIELD else 0.0
        if outage:
            # No room is known to come: not before the outage is expected to end, nor
            # sooner than an answer that books nothing.
            left = max(modes.expected_outage_left(now), sh.retry_after_unbooked)
            not_before = max(not_before, now + left)
        pace = est.book_pace
        if t.solicited:
            # Back in its slot and still not served: the optimism that booked it did not
            # hold. Its next slot is booked at the plain estimate, so a request bounces
            # once, not until its client runs out of retries.
            pace = min(pace, est.pace * sh.pace_headroom)
            if not est.pace_known and not outage:
                # The pace is still a guess, and the guess just proved optimistic: no boost
                # at all, or the rebooked slot is early again.
                pace = min(pace, est.pace)
        # Work in front of the return: what is queued, but no more than can be served
        # within a client's patience (the rest of a wave being read will be answered too,
        # and must not push every return back by the time it would take to serve it).
        ahead = min(queued, int(est.pace * est.patience))
        return self.pacer.book(c.index, now, pace, baseline, ahead, not_before, key_of(t))

    def _held(
        self, t: Ticket, reason: Reason, ms: int, now: float, est: Estimates, stall: float
    ) -> Refusal:
        """A paced answer, sent after a hold of part of the time the client has left (before
        its deadline, less the margin and our last stall: 1/4 to 3/4 of it at the default
        `hold_share` and `hold_spread`), at most `shedding.hold_max` and the booked return,
        spread evenly: a wave read together and held alike would be answered, and come back,
        together. Where that range holds the booked wait's fraction of a second, the hold is
        that fraction, so the Retry-After left is whole seconds."""
        tuning = self.tuning
        left = t.deadline if t.deadline is not None else t.arrived + est.patience
        room = left - now - self.config.shedding.deadline_margin - stall
        longest = min(self.config.shedding.hold_max, ms / 1000.0, room * tuning.hold_share)
        status = self.status_for(reason)
        if longest < tuning.hold_min:
            return Refusal(reason, status, ms)
        # A hold of the booked wait's fraction of a second leaves a Retry-After of whole
        # seconds: a client reading only the header (delay-seconds are whole, and rounded up)
        # comes back at its slot, not up to a second after it. Taken when it is in the range
        # the spread would hold; its returns are spread by their slots already.
        part = ms % 1000
        if ms >= 1000 and longest * (1.0 - tuning.hold_spread) <= part / 1000.0 <= longest:
            return Refusal(reason, status, ms - part, part / 1000.0)
        self._hold_phase = (self._hold_phase + _GOLDEN) % 1.0  # evenly spread, no RNG
        hold = longest * (1.0 - tuning.hold_spread * self._hold_phase)
        return Refusal(reason, status, max(1, ms - int(hold * 1000.0)), hold)


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)
