"""The mode controller: NORMAL, OUTAGE, RECOVERY, SHIELD as data (pure, clock passed in).

Read it like h11's `_state.py`: the states, the events, one table of legal moves, and one
function (`next_mode`) that applies an event or raises `IllegalTransition`. `ModeController`
adds what the table cannot say: when to fire an event (`evaluate`, from a `Snapshot` of the
signals), minimum dwell in every mode, the RECOVERY hold, SHIELD's time-to-live and allow-list,
and a bounded history of transitions. It does no I/O: the controller (`controller.Controller`)
logs and counts the `Transition` records it returns.

| from     | event            | to       | why                                                |
| -------- | ---------------- | -------- | -------------------------------------------------- |
| NORMAL   | BROKEN           | OUTAGE   | connect failures / fast 5xx / failed probes        |
| NORMAL   | SURGE            | RECOVERY | queue past threshold, arrival surge, retry storm   |
| NORMAL   | LOADED_AT_START  | RECOVERY | a restart while the backend is already loaded      |
| OUTAGE   | HEALTHY_BACKLOG  | RECOVERY | healthy again while work was held or shed          |
| OUTAGE   | HEALTHY          | NORMAL   | healthy again and nobody waited                    |
| RECOVERY | BROKEN           | OUTAGE   | broken again                                       |
| RECOVERY | CALM             | NORMAL   | queue short, limit settled, healthy, for `hold`    |
| SHIELD   | SHIELD_EXPIRED   | RECOVERY | TTL over (never straight to NORMAL)                |
| NORMAL   | SURGE (hinted)   | RECOVERY | a peer is in RECOVERY/OUTAGE and a smaller local   |
|          |                  |          | signal (`fleet.hint_share` of a threshold) holds   |
| any      | OPERATOR_*       | ...      | see TRANSITIONS (SHIELD exits only to RECOVERY)    |

Overload is not an outage: pushback and timeouts never make BROKEN while the backend answers.
A fleet's mode hint (a peer sidecar in RECOVERY or OUTAGE, `Snapshot.fleet_hint`) is one more
input: it lowers a threshold, it never fires an event alone.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import Config
from .signals import HealthView


class Mode(enum.Enum):
    """The four modes (values are the metric / status names)."""

    NORMAL = "NORMAL"
    OUTAGE = "OUTAGE"
    RECOVERY = "RECOVERY"
    SHIELD = "SHIELD"


class Event(enum.Enum):
    """What can happen to the controller."""

    BROKEN = "broken"
    HEALTHY = "healthy"
    HEALTHY_BACKLOG = "healthy-backlog"
    SURGE = "surge"
    LOADED_AT_START = "loaded-at-start"
    CALM = "calm"
    SHIELD_EXPIRED = "shield-expired"
    OPERATOR_RECOVERY = "operator-recovery"
    OPERATOR_SHIELD = "operator-shield"
    OPERATOR_NORMAL = "operator-normal"


TRANSITIONS: dict[Mode, dict[Event, Mode]] = {
    Mode.NORMAL: {
        Event.BROKEN: Mode.OUTAGE,
        Event.SURGE: Mode.RECOVERY,
        Event.LOADED_AT_START: Mode.RECOVERY,
        Event.OPERATOR_RECOVERY: Mode.RECOVERY,
        Event.OPERATOR_SHIELD: Mode.SHIELD,
    },
    Mode.OUTAGE: {
        Event.HEALTHY: Mode.NORMAL,
        Event.HEALTHY_BACKLOG: Mode.RECOVERY,
        Event.OPERATOR_RECOVERY: Mode.RECOVERY,
        Event.OPERATOR_SHIELD: Mode.SHIELD,
        Event.OPERATOR_NORMAL: Mode.NORMAL,
    },
    Mode.RECOVERY: {
        Event.BROKEN: Mode.OUTAGE,
        Event.CALM: Mode.NORMAL,
        Event.OPERATOR_SHIELD: Mode.SHIELD,
        Event.OPERATOR_NORMAL: Mode.NORMAL,
    },
    Mode.SHIELD: {
        Event.SHIELD_EXPIRED: Mode.RECOVERY,
        Event.OPERATOR_RECOVERY: Mode.RECOVERY,
        Event.OPERATOR_SHIELD: Mode.SHIELD,  # renew: new TTL and allow-list
    },
}

OPERATOR_EVENTS = frozenset({Event.OPERATOR_RECOVERY, Event.OPERATOR_SHIELD, Event.OPERATOR_NORMAL})

# Transition reasons: a closed set, because they are metric labels.
REASON_ERRORS = "upstream-errors"
REASON_PROBES = "probes-failing"
REASON_QUEUE = "queue-depth"
REASON_SURGE = "arrival-surge"
REASON_RETRIES = "retry-storm"
REASON_LOADED = "loaded-at-start"
REASON_HEALTHY = "upstream-healthy"
REASON_DRAINED = "drained"
REASON_SHIELD_EXPIRED = "shield-expired"
REASON_OPERATOR = "operator"
REASON_FLEET = "fleet-hint"  # a smaller local signal, with a peer in RECOVERY or OUTAGE
TRANSITION_REASONS: tuple[str, ...] = (
    REASON_ERRORS,
    REASON_PROBES,
    REASON_QUEUE,
    REASON_SURGE,
    REASON_RETRIES,
    REASON_LOADED,
    REASON_HEALTHY,
    REASON_DRAINED,
    REASON_SHIELD_EXPIRED,
    REASON_OPERATOR,
    REASON_FLEET,
)


# The reasons each event can carry (so every transition series can be bound up front).
EVENT_REASONS: dict[Event, tuple[str, ...]] = {
    Event.BROKEN: (REASON_ERRORS, REASON_PROBES, REASON_FLEET),
    Event.HEALTHY: (REASON_HEALTHY,),
    Event.HEALTHY_BACKLOG: (REASON_HEALTHY,),
    Event.SURGE: (REASON_QUEUE, REASON_SURGE, REASON_RETRIES, REASON_FLEET),
    Event.LOADED_AT_START: (REASON_LOADED,),
    Event.CALM: (REASON_DRAINED,),
    Event.SHIELD_EXPIRED: (REASON_SHIELD_EXPIRED,),
    Event.OPERATOR_RECOVERY: (REASON_OPERATOR,),
    Event.OPERATOR_SHIELD: (REASON_OPERATOR,),
    Event.OPERATOR_NORMAL: (REASON_OPERATOR,),
}


def possible_transitions() -> list[tuple[Mode, Mode, str]]:
    """Every (from, to, reason) the controller can record: a small, closed set."""
    out = set()
    for mode, moves in TRANSITIONS.items():
        for event, to in moves.items():
            for reason in EVENT_REASONS[event]:
                out.add((mode, to, reason))
    return sorted(out, key=lambda x: (x[0].value, x[1].value, x[2]))


class Effect(enum.Enum):
    """What a transition does beyond changing the mode (carried out by the controller for
    the signals and the limiter, by the gate for the queue)."""

    FRESH_EVIDENCE = "fresh-evidence"  # error window and probe streaks reset: leave on new evidence
    FORGET_OUTAGE = "forget-outage"  # the error window of the outage is not the backend now
    SLOW_START = "slow-start"  # the limiter ramps from what it had proven
    COLD_START = "cold-start"  # the limiter ramps from its floor: nothing it learnt holds
    REBASE = "rebase"  # judged calm at a higher arrival rate: that rate is the new baseline
    ALLOW_LIST = "allow-list"  # SHIELD: only allow-listed callers; everyone else waiting refused


def effects_of(from_mode: Mode, to_mode: Mode, event: Event) -> tuple[Effect, ...]:
    """The effects of a transition, by the table below (every transition also recomputes
    the limit in force and brings the next probe forward).

    | transition                                | effects                       |
    | ----------------------------------------- | ----------------------------- |
    | into OUTAGE                               | FRESH_EVIDENCE                |
    | out of OUTAGE                             | FORGET_OUTAGE                 |
    | into RECOVERY from OUTAGE or SHIELD, or   | COLD_START                    |
    | a restart under load (LOADED_AT_START)    |                               |
    | into RECOVERY otherwise                   | SLOW_START                    |
    | into NORMAL from another mode             | REBASE (if arrivals surge)    |
    | into SHIELD (also a renewal)              | ALLOW_LIST                    |
    """
    effects: list[Effect] = []
    if to_mode is Mode.OUTAGE:
        effects.append(Effect.FRESH_EVIDENCE)
    if from_mode is Mode.OUTAGE:
        effects.append(Effect.FORGET_OUTAGE)
    if to_mode is Mode.RECOVERY:
        cold = from_mode in (Mode.OUTAGE, Mode.SHIELD) or event is Event.LOADED_AT_START
        effects.append(Effect.COLD_START if cold else Effect.SLOW_START)
    if to_mode is Mode.NORMAL and from_mode is not Mode.NORMAL:
        effects.append(Effect.REBASE)
    if to_mode is Mode.SHIELD:
        effects.append(Effect.ALLOW_LIST)
    return tuple(effects)


class IllegalTransition(ValueError):
    """An event that the current mode does not accept (the table has no such move)."""


def next_mode(mode: Mode, event: Event) -> Mode:
    """The mode `event` leads to from `mode`; raise IllegalTransition if there is none."""
    try:
        return TRANSITIONS[mode][event]
    except KeyError:
        allowed = ", ".join(e.value for e in TRANSITIONS[mode])
        raise IllegalTransition(
            f"{event.value} is not allowed in {mode.value} (allowed: {allowed})"
        ) from None


@dataclass(frozen=True, slots=True)
class Transition:
    """One mode change, as logged, counted and shown in /status."""

    at: float
    from_mode: Mode
    to_mode: Mode
    event: Event
    reason: str  # one of TRANSITION_REASONS
    detail: str  # human-readable evidence (numbers), not a label

    @property
    def effects(self) -> tuple[Effect, ...]:
        """What this transition does beyond changing the mode (`effects_of`)."""
        return effects_of(self.from_mode, self.to_mode, self.event)

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-able form for /status."""
        return {
            "from": self.from_mode.value,
            "to": self.to_mode.value,
            "event": self.event.value,
            "reason": self.reason,
            "detail": self.detail,
            "seconds_ago": round(now - self.at, 3),
        }


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
