"""The mode controller: when to move between modes (pure, clock passed in).

`ModeController` adds what the table (`mode_table`) cannot say: when to fire an event
(`evaluate`, from a `Snapshot` of the signals), minimum dwell in every mode, the RECOVERY
hold, SHIELD's time-to-live and allow-list, and a bounded history of transitions. It does no
I/O: the controller (`controller.Controller`) logs and counts the `Transition` records it
returns. The table's vocabulary most modules need (`Mode`, `Event`, `Effect`, `Transition`,
`IllegalTransition`) is exported here too.

Overload is not an outage: pushback and timeouts never make BROKEN while the backend answers.
A fleet's mode hint (a peer sidecar in RECOVERY or OUTAGE, `Snapshot.fleet_hint`) is one more
input: it lowers a threshold, it never fires an event alone.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..config import Config
from .mode_table import (
    REASON_DRAINED,
    REASON_ERRORS,
    REASON_FLEET,
    REASON_HEALTHY,
    REASON_LOADED,
    REASON_PROBES,
    REASON_QUEUE,
    REASON_RETRIES,
    REASON_SHIELD_EXPIRED,
    REASON_SURGE,
    Effect,
    Event,
    IllegalTransition,
    Mode,
    Transition,
    next_mode,
)
from .signals import HealthView

__all__ = [
    "Effect",
    "Event",
    "IllegalTransition",
    "Mode",
    "ModeController",
    "Snapshot",
    "Transition",
]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The signals the mode machine decides on, gathered by `controller.Controller` each tick."""

    health: HealthView
    queue_depth: int
    arrival_rate: float  # arrivals/s over the rate window
    surge_ratio: float  # arrival rate / frozen baseline (0 while no baseline)
    retry_share: float  # unsolicited retries / arrivals
    backlog: bool  # work was held or shed since the mode began
    saturated: bool  # the limit was reached with work waiting or shed for overload, lately
    limit_growing: bool
    loaded: bool = False  # saturated at start while the backend queued or did not answer
    returns_ahead: float = 0.0  # seconds until the last booked return slot (0: none ahead)
    fleet_hint: Mode | None = None  # a peer sidecar's RECOVERY or OUTAGE, while it holds


class ModeController:
    """The current mode, what moves it, and its recent history."""

    def __init__(self, config: Config, now: float) -> None:
        self.config = config
        self.state = Mode.NORMAL
        self.since = now
        self.reason = "start"
        self.started_at = now
        self.shield_until = 0.0
        self.shield_allow: frozenset[str] = frozenset()
        self.history: deque[Transition] = deque(maxlen=config.modes.transitions_kept)
        self._calm_since: float | None = None

    # --- the one function that moves the state ---------------------------------------------
    def apply(
        self,
        event: Event,
        now: float,
        reason: str,
        detail: str = "",
        shield_ttl: float | None = None,
        shield_allow: frozenset[str] = frozenset(),
    ) -> Transition:
        """Apply `event` (raises IllegalTransition) and return the transition record."""
        new = next_mode(self.state, event)
        transition = Transition(now, self.state, new, event, reason, detail)
        self.state = new
        self.since = now
        self.reason = reason
        self._calm_since = None
        if new is Mode.SHIELD:
            ttl = self.config.modes.shield_default_ttl if shield_ttl is None else shield_ttl
            self.shield_until = now + ttl
            self.shield_allow = shield_allow
        else:
            self.shield_until = 0.0
            self.shield_allow = frozenset()
        self.history.append(transition)
        return transition

    # --- policy ----------------------------------------------------------------------------
    def broken_reason(self, h: HealthView, hint: Mode | None = None) -> str | None:
        """Why the upstream counts as broken (not merely busy), or None. With a peer in
        OUTAGE (`hint`), `fleet.hint_share` of the samples is enough evidence."""
        m = self.config.modes
        if h.samples >= m.outage_min_samples and h.broken_ratio >= m.outage_error_ratio:
            return REASON_ERRORS
        # A probe can time out on a busy backend: only believe failed probes when nothing
        # else got an answer either.
        if h.probe_fail_streak >= m.outage_probe_failures and not h.answering:
            return REASON_PROBES
        enough = math.ceil(m.outage_min_samples * self.config.fleet.hint_share)
        if hint is Mode.OUTAGE and h.samples >= enough and h.broken_ratio >= m.outage_error_ratio:
            return REASON_FLEET
        return None

    def evaluate(self, s: Snapshot, now: float) -> Transition | None:
        """Fire at most one automatic event for this snapshot; None when the mode holds."""
        cfg = self.config
        mode = self.state
        if mode is Mode.SHIELD:
            if now >= self.shield_until:
                return self.apply(Event.SHIELD_EXPIRED, now, REASON_SHIELD_EXPIRED, "ttl over")
            return None
        broken = self.broken_reason(s.health, s.fleet_hint)
        if mode is Mode.RECOVERY:
            calm = (
                broken is None
                and s.queue_depth <= cfg.recovery.exit_queue_depth
                and not s.limit_growing
                and s.returns_ahead <= 0.0  # the clients we told to come back are back
            )
            if not calm:
                self._calm_since = None
            elif self._calm_since is None:
                self._calm_since = now
        if now - self.since < cfg.modes.min_dwell:
            return None
        h = s.health
        if mode is Mode.NORMAL:
            return self._from_normal(s, now, broken)
        if mode is Mode.OUTAGE:
            # Probes are the authority here: the outcome window only holds the few canaries
            # of the trickle, and their failures before the backend came back are stale.
            recovered = h.probe_ok_streak >= cfg.modes.outage_exit_probes or (
                h.ok >= cfg.modes.outage_exit_probes and h.broken == 0
            )
            if recovered:
                detail = f"probes ok x{h.probe_ok_streak}, answers ok {h.ok}"
                if s.backlog or s.queue_depth > 0:
                    return self.apply(Event.HEALTHY_BACKLOG, now, REASON_HEALTHY, detail)
                return self.apply(Event.HEALTHY, now, REASON_HEALTHY, detail)
            return None
        # RECOVERY
        if broken is not None:
            return self.apply(Event.BROKEN, now, broken, _health_detail(h))
        if self._calm_since is not None and now - self._calm_since >= cfg.recovery.hold:
            detail = f"queue {s.queue_depth}, limit settled, held {cfg.recovery.hold:g}s"
            return self.apply(Event.CALM, now, REASON_DRAINED, detail)
        return None

    def _from_normal(self, s: Snapshot, now: float, broken: str | None) -> Transition | None:
        cfg = self.config
        rec = cfg.recovery
        h = s.health
        if broken is not None:
            return self.apply(Event.BROKEN, now, broken, _health_detail(h))
        if (
            cfg.modes.start_in_recovery_if_loaded
            and now - self.started_at < cfg.modes.startup_window
            and (
                s.loaded
                or (
                    h.samples >= cfg.modes.outage_min_samples
                    and h.pushback_ratio >= cfg.limiter.backpressure_ratio
                )
            )
        ):
            detail = f"loaded={s.loaded}, pushback {h.pushback_ratio:.0%}"
            return self.apply(Event.LOADED_AT_START, now, REASON_LOADED, detail)
        if s.queue_depth >= rec.enter_queue_depth:
            return self.apply(Event.SURGE, now, REASON_QUEUE, f"queue depth {s.queue_depth}")
        # An arrival surge or retry share the backend absorbs (nothing waits, nothing was
        # shed) is not a recovery: only judge them under pressure. A cold start's first
        # seconds of traffic must not look like a reopening backlog.
        pressed = s.queue_depth > 0 or s.saturated
        if pressed and s.arrival_rate >= rec.enter_min_rate:
            if s.surge_ratio >= rec.enter_arrival_ratio:
                detail = f"arrivals {s.arrival_rate:.0f}/s = {s.surge_ratio:.1f}x baseline"
                return self.apply(Event.SURGE, now, REASON_SURGE, detail)
            if s.retry_share >= rec.enter_retry_share and h.answering:
                detail = f"retries {s.retry_share:.0%} of {s.arrival_rate:.0f}/s"
                return self.apply(Event.SURGE, now, REASON_RETRIES, detail)
        if s.fleet_hint is not None:
            return self._hinted(s, now, pressed)
        return None

    def _hinted(self, s: Snapshot, now: float, pressed: bool) -> Transition | None:
        """A peer is in RECOVERY or OUTAGE: a share (`fleet.hint_share`) of the queue or surge
        threshold is enough, but some local pressure must be there (never the hint alone)."""
        share = self.config.fleet.hint_share
        rec = self.config.recovery
        peer = s.fleet_hint.value if s.fleet_hint is not None else ""
        if s.queue_depth >= max(1, math.ceil(rec.enter_queue_depth * share)):
            detail = f"queue depth {s.queue_depth}, a peer in {peer}"
            return self.apply(Event.SURGE, now, REASON_FLEET, detail)
        ratio = 1.0 + (rec.enter_arrival_ratio - 1.0) * share
        if pressed and s.arrival_rate >= rec.enter_min_rate * share and s.surge_ratio >= ratio:
            detail = f"arrivals {s.surge_ratio:.1f}x baseline, a peer in {peer}"
            return self.apply(Event.SURGE, now, REASON_FLEET, detail)
        return None

    def expected_outage_left(self, now: float) -> float:
        """How long the current outage is expected to last from now: about as long as it has
        so far (nobody knows when the backend comes back), at most `outage_retry_after_max`,
        so retries are not burnt while it is down and the backlog is not kept away after."""
        return min(now - self.since, self.config.modes.outage_retry_after_max)

    def shield_remaining(self, now: float) -> float:
        """Seconds of SHIELD left (0 outside SHIELD)."""
        return max(0.0, self.shield_until - now) if self.state is Mode.SHIELD else 0.0

    def reconfigure(self, config: Config) -> None:
        """New thresholds; the mode and its history stay."""
        self.config = config
        if self.history.maxlen != config.modes.transitions_kept:
            self.history = deque(self.history, maxlen=config.modes.transitions_kept)


def _health_detail(h: HealthView) -> str:
    return (
        f"broken {h.broken}/{h.samples} ({h.broken_ratio:.0%}), "
        f"failed probes x{h.probe_fail_streak}, answering={h.answering}"
    )
