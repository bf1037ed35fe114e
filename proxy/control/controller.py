"""The control loop's pure part: what each answer teaches (the tally), the tally folded into
the signals each tick, saturation, the snapshot the mode machine decides on, and what a mode
change does to the signals and the limiter.

The gate owns the queue and the request path; on each tick it asks this controller to fold
the tally, note saturation and evaluate the mode, then carries out the queue's part of a
transition (SHIELD's allow-list, the limit in force). Clock-injected, no I/O but a log line
per transition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..admission.estimates import Estimates
from ..config import Config
from ..contracts import Outcome, Reason, Ticket
from ..ops.metrics import Metrics
from ..tuning import CONTROL, ControlTuning
from .limit import Limit
from .loop_lag import LoopLag
from .mode_table import (
    REASON_ERRORS,
    Effect,
    Event,
    Mode,
    Transition,
    possible_transitions,
)
from .modes import ModeController, Snapshot
from .signals import (
    BROKEN,
    PUSHBACK,
    TIMEOUT,
    ArrivalRate,
    Patience,
    UpstreamHealth,
    classify_outcome,
)

modes_log = logging.getLogger("sluice.modes")


class Tally:
    """What happened since the last tick (plain ints: the request path adds to them)."""

    __slots__ = (
        "arrivals",
        "broken",
        "broken_due",
        "broken_streak",
        "clean",
        "clean_slack",
        "clean_sum",
        "lat_sum",
        "ok",
        "overloaded",
        "push",
        "retries",
        "returns",
        "timeouts",
    )

    def __init__(self) -> None:
        self.arrivals = 0
        self.retries = 0  # unsolicited retries among the arrivals
        self.returns = 0  # solicited returns (booked slots redeemed) among them
        self.ok = 0
        self.lat_sum = 0.0
        self.clean = 0  # good answers to requests sent since the limiter's `measuring_since`
        self.clean_sum = 0.0
        self.clean_slack = 0.0  # their summed `Outcome.slack`
        self.push = 0
        self.timeouts = 0
        self.broken = 0
        self.broken_streak = 0  # broken answers since the last good one (not reset per tick)
        self.broken_due = False  # a broken answer extended a streak past the threshold
        self.overloaded = 0  # overload and outage refusals


class Controller:
    """Folds the tally into the signals each tick, and evaluates and applies mode changes."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        modes: ModeController,
        limiter: Limit,
        estimates: Estimates,
        patience: Patience,
        now: float,
        tuning: ControlTuning = CONTROL,
    ) -> None:
        self.config = config
        self.tuning = tuning
        self.metrics = metrics
        self.modes = modes
        self.limiter = limiter
        self.estimates = estimates
        self.patience = patience
        self.health = UpstreamHealth(config.modes.error_window)
        self.rates = ArrivalRate(
            config.recovery.rate_window, config.recovery.baseline_halflife, now
        )
        self.loop = LoopLag(now)
        self.tally = Tally()
        self.started_at = now
        self.backlog = 0  # requests held or shed since the mode began
        self._last_tick = now
        self._lat_sum = 0.0  # the last tick's good answers' summed latency
        # A peer sidecar's RECOVERY or OUTAGE (`fleet`), and until when it holds (our clock).
        self.hint_mode: Mode | None = None
        self.hint_until = 0.0
        self._saturated_ticks = 0
        self._loaded_at_start = False  # saturated during the start-up window
        # Bound up front: no series appears on the request path (or on a transition).
        self._transition_children = {
            (a, b, r): metrics.transitions.labels(a.value, b.value, r)
            for a, b, r in possible_transitions()
        }

    def reconfigure(self, old: Config, config: Config, now: float) -> None:
        """Rebuild the signals whose windows changed; everything learnt is kept."""
        self.config = config
        self.modes.reconfigure(config)
        if old.modes.error_window != config.modes.error_window:
            self.health = UpstreamHealth(config.modes.error_window)
        rec, old_rec = config.recovery, old.recovery
        if (rec.rate_window, rec.baseline_halflife) != (
            old_rec.rate_window,
            old_rec.baseline_halflife,
        ):
            baseline = self.rates.baseline
            self.rates = ArrivalRate(rec.rate_window, rec.baseline_halflife, now)
            self.rates.baseline = baseline

    # --- each answer ----------------------------------------------------------------------
    def learn(self, ticket: Ticket, outcome: Outcome, clock: Callable[[], float]) -> bool:
        """Count an admitted request's outcome; True when it extends a run of broken answers
        past `modes.outage_min_samples` (the backend is down: evaluate at once)."""
        t = self.tally
        if outcome.good:
            t.ok += 1
            t.lat_sum += outcome.latency
            t.broken_streak = 0
            now = clock()
            since = self.limiter.measuring_since  # read now: a mode change may have moved it
            if since is None or now - outcome.latency >= since:
                # Sent at the limit in force: what a request sent now should take.
                self.estimates.recent.add(now, outcome.latency)
                if since is not None:
                    t.clean += 1
                    t.clean_sum += outcome.latency
                    t.clean_slack += outcome.slack
            return False
        kind = classify_outcome(
            outcome.status, outcome.latency, outcome.error, self.config.modes.fast_error
        )
        if kind == TIMEOUT:
            # A censored sample (it would have taken at least this long), if sent at the
            # limit in force.
            now = clock()
            since = self.limiter.measuring_since
            if since is None or now - outcome.latency >= since:
                self.estimates.recent.add(now, outcome.latency)
        if outcome.error == "cancelled" and ticket.deadline is None:
            self.patience.observe(clock() - ticket.arrived)  # its client left
        if kind == PUSHBACK:
            t.push += 1
        elif kind == TIMEOUT:
            t.timeouts += 1
        elif kind == BROKEN:
            t.broken += 1
            t.broken_streak += 1
            if t.broken_streak >= self.config.modes.outage_min_samples:
                t.broken_due = True
                return True
        return False

    def booked(self, reason: Reason, queued: int) -> bool:
        """A refusal booked a return: the mode's backlog grows. True when, in NORMAL, the
        work refused or queued for capacity reaches `recovery.enter_queue_depth`: a wave
        refused by NORMAL's short queue is a reopening backlog just as one that queues, to
        be judged as soon as this request is answered."""
        self.backlog += 1
        if reason not in (Reason.OVERLOAD, Reason.OUTAGE):
            return False
        t = self.tally
        t.overloaded += 1
        depth = self.config.recovery.enter_queue_depth
        return self.modes.state is Mode.NORMAL and queued + t.overloaded == depth

    # --- each tick ----------------------------------------------------------------------------
    def fold(self, now: float, queued: int) -> tuple[int, bool]:
        """Fold the tally since the last tick into the signals and the limiter; returns the
        good answers and whether work waited (queued, or refused for capacity)."""
        t = self.tally
        dt = now - self._last_tick
        self._last_tick = now
        lag = max(0.0, dt - self.config.recovery.batch_interval)
        self.loop.observe(now, lag, self.config.shedding.busy_lag, self.estimates.patience)
        self.limiter.note_lag(lag)
        ok = t.ok
        self._lat_sum = t.lat_sum  # for `note_saturation`: was goodput measured at the knee
        self.estimates.observe(ok, dt)
        self.health.record(now, ok, t.push, t.timeouts, t.broken)
        self.limiter.add(
            ok, t.lat_sum, t.push + t.timeouts, t.broken, t.clean, t.clean_sum, t.clean_slack
        )
        self.rates.record(now, t.arrivals, t.retries, t.returns)
        t.ok = t.push = t.timeouts = t.broken = t.clean = t.arrivals = t.retries = 0
        t.returns = 0
        t.lat_sum = t.clean_sum = t.clean_slack = 0.0
        return ok, bool(t.overloaded or queued)

    def note_saturation(self, now: float, ok: int, queued: int, in_flight: int, eff: int) -> None:
        """Saturated (work refused for capacity, or waiting for a full limiter): goodput
        measures capacity, and `saturated_ticks` such ticks in a row in the start-up window
        mean we started under load."""
        if self.tally.overloaded or (queued and in_flight >= eff):
            self._saturated_ticks += 1
            lim = self.limiter
            mode = self.modes.state
            measurable = not (
                lim.slow_start
                or lim.probing
                or mode is Mode.OUTAGE
                or mode is Mode.SHIELD
                or eff < lim.limit  # a batch ramp, not the limiter, is what binds
            )
            floor = lim.floor.value
            knee = None if floor is None else floor * lim.config.latency_tolerance
            self.estimates.saturated(now, ok, measurable, self._lat_sum, knee)
            if (
                self._saturated_ticks >= self.tuning.saturated_ticks
                and now - self.started_at < self.config.modes.startup_window
                and (lim.floor.value is None or lim.knee_at is not None)
            ):
                # Full, and the backend is slow to answer or queues at this concurrency:
                # loaded. Full while it answers at its unloaded latency only means our
                # starting limit is below the traffic: the limiter grows, no RECOVERY.
                self._loaded_at_start = True  # remembered: dwell may not let us act yet
        else:
            self._saturated_ticks = 0
            self.estimates.not_saturated(now)
        self.tally.overloaded = 0

    def learn_baseline(self, now: float, waiting: bool) -> None:
        """The arrival baseline learns in NORMAL. A start under load (RECOVERY from the first
        seconds) never saw NORMAL: it seeds the baseline from traffic served with nothing
        held or refused for capacity, or fresh traffic would have no first tier when a wave
        comes. Only seeds: later in a RECOVERY, what arrives includes booked returns."""
        mode = self.modes.state
        seed = self.rates.baseline is None and mode is Mode.RECOVERY and not waiting
        self.rates.update_baseline(now, learning=mode is Mode.NORMAL or seed)

    # --- mode changes -------------------------------------------------------------------------
    def evaluate(
        self, now: float, queued: int, in_flight: int, returns_ahead: float
    ) -> Transition | None:
        """Fire what the signals call for: a run of broken answers (OUTAGE now, from NORMAL
        or RECOVERY), else the mode machine's evaluation of the snapshot. The transition's
        effects on the signals and the limiter are applied; the caller applies the rest."""
        tr = self._broken_run(now)
        if tr is None:
            tr = self.modes.evaluate(self.snapshot(now, queued, returns_ahead), now)
        if tr is not None:
            self.apply(tr, now, queued, in_flight)
        return tr

    def _broken_run(self, now: float) -> Transition | None:
        """A run of broken answers (connect failures, fast 5xx) with nothing good between:
        the backend is down, whatever share of a window that still remembers the healthy
        seconds before it is broken."""
        t = self.tally
        due, t.broken_due = t.broken_due, False
        n = t.broken_streak
        mode = self.modes.state
        if not due or n < self.config.modes.outage_min_samples:
            return None
        if mode is not Mode.NORMAL and mode is not Mode.RECOVERY:
            return None
        return self.modes.apply(Event.BROKEN, now, REASON_ERRORS, f"{n} broken answers in a row")

    def note_fleet_hint(self, mode: str | None, until: float) -> None:
        """The strongest mode hint of the fleet's peers (None: none), believed until `until`
        on our clock (the fleet link calls this after each exchange)."""
        self.hint_mode = Mode(mode) if mode in (Mode.RECOVERY.value, Mode.OUTAGE.value) else None
        self.hint_until = until if self.hint_mode is not None else 0.0

    def snapshot(self, now: float, queued: int, returns_ahead: float) -> Snapshot:
        """The signals the mode machine decides on."""
        normal = self.modes.state is Mode.NORMAL
        return Snapshot(
            health=self.health.view(now),
            queue_depth=queued + (self.tally.overloaded if normal else 0),
            arrival_rate=self.rates.rate(now),
            surge_ratio=self.rates.surge_ratio(now),
            retry_share=self.rates.retry_share(now),
            backlog=self.backlog > 0,
            saturated=self._saturated_ticks >= self.tuning.saturated_ticks or self._loaded_at_start,
            loaded=self._loaded_at_start,
            limit_growing=self.limiter.growing(),
            returns_ahead=returns_ahead,
            fleet_hint=self.hint_mode if now < self.hint_until else None,
        )

    def apply(self, tr: Transition, now: float, queued: int, in_flight: int) -> None:
        """Count and log a mode change; reset what a mode learns; the signals' and the
        limiter's part of its effects."""
        self._transition_children[(tr.from_mode, tr.to_mode, tr.reason)].inc()
        self.metrics.set_mode(tr.to_mode.value)
        modes_log.info(
            "mode %s -> %s (%s)",
            tr.from_mode.value,
            tr.to_mode.value,
            tr.reason,
            extra={
                "from_mode": tr.from_mode.value,
                "to_mode": tr.to_mode.value,
                "reason": tr.reason,
                "event": tr.event.value,
                "detail": tr.detail,
                "queue": queued,
                "limit": self.limiter.limit,
                "in_flight": in_flight,
            },
        )
        self.backlog = 0
        self._loaded_at_start = False
        effects = tr.effects
        if Effect.FRESH_EVIDENCE in effects:
            self.health.reset_window()
            self.health.reset_probes()
        if Effect.FORGET_OUTAGE in effects:
            self.health.reset_window()
        if Effect.SLOW_START in effects or Effect.COLD_START in effects:
            self.limiter.enter_slow_start(now, from_floor=Effect.COLD_START in effects)
            # Answers since the last tick were counted clean against the instant before.
            t = self.tally
            t.clean, t.clean_sum, t.clean_slack = 0, 0.0, 0.0
            self.metrics.limit.set(self.limiter.limit)
        if Effect.REBASE in effects:
            ratio = self.config.recovery.enter_arrival_ratio
            if self.rates.surge_ratio(now) >= ratio:
                self.rates.rebase(now)  # judged calm at this rate: it is the new normal
