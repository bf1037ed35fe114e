"""The mode machine's table: NORMAL, OUTAGE, RECOVERY, SHIELD, their events and legal moves.

Read it like h11's `_state.py`: the states, the events, one table of legal moves, one function
(`next_mode`) that applies an event or raises `IllegalTransition`, the reasons each event can
carry (every transition series is bound up front) and the effects of each transition, as data.
When to fire an event is `modes.ModeController`'s.

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
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


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
