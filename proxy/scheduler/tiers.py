"""Queue levels: a priority class, then a tier within it; levels are served in order.

The tiers of a priority class:
1. fresh arrivals while they stay within the arrival baseline's rate (with the headroom of
   `AdmissionTuning.fresh_headroom`): fresh traffic keeps its share whatever happens to the
   backlog and whatever the pacing error;
2. solicited returns (the request came back in the slot we booked for it): ahead of every
   other arrival of their caller, and never pushed out of a full queue;
3. first tries beyond the baseline (a reopening backlog, and the fresh traffic read behind it);
4. in-budget retries (unsolicited). In one tier with 3, a retry storm served newest-first would
   push every first try read before it past its expiry.
Tiers 1 and 2 are one queue across callers, in arrival order: what enters them is already
bounded (the first tier by its allowance, returns by the calendar that gave them their times).
Tiers 3 and 4, where a backlog can pile up, are served by deficit round-robin over callers by
weight, so one orchestrator's backlog cannot starve another caller.
"""

from __future__ import annotations

from ..config import PRIORITY_CLASSES

N_PRIO = len(PRIORITY_CLASSES)
TIERS = 4
TIER_FRESH, TIER_SOLICITED, TIER_REST, TIER_RETRY = 0, 1, 2, 3
TIER_NAMES = ("fresh", "solicited", "rest", "retry")
# By tier: served as one queue across callers, not round-robin.
IN_ORDER = (True, True, False, False)
N_LEVELS = N_PRIO * TIERS


def level_of(priority: int, tier: int) -> int:
    """The queue level of a priority class's tier."""
    return priority * TIERS + tier


def tier_of(level: int) -> int:
    """The tier of a queue level."""
    return level % TIERS


def in_order(level: int) -> bool:
    """Whether a level is served as one queue across callers (else round-robin)."""
    return IN_ORDER[level % TIERS]
