"""The limit in force (`eff`): how many requests the gate lets be in flight now (pure).

The learned limit in NORMAL and SHIELD; the OUTAGE trickle in OUTAGE; in RECOVERY
min(limit, in-flight at the last tick + `batch_size`). So each `batch_interval` at most
`batch_size` *new* concurrent requests enter, never past the limiter's free slots, while a
finished request's slot is handed to the next waiter at once (one for one, which never raises
concurrency). Between ticks (`batch=False`: a reload, an operator's command) RECOVERY's
ceiling may only come down, so no batch is released out of turn.

Invariant the gate restores after every event: when in-flight is below the limit in force,
nothing queued is eligible (everything waiting is held by its caller's cap), which is what
lets the fast path skip the queues.
"""

from __future__ import annotations

from ..config import Config
from ..control.modes import Mode


def limit_in_force(
    mode: Mode, limit: int, in_flight: int, current: int, batch: bool, config: Config
) -> int:
    """The limit in force for `mode`, given the learned `limit`, what is in flight and the
    limit in force until now (`current`); `batch`: this is a tick, which may release a batch."""
    if mode is Mode.RECOVERY:
        if batch:
            return min(limit, in_flight + config.recovery.batch_size)
        return min(current, limit)
    if mode is Mode.OUTAGE:
        return min(limit, config.modes.outage_trickle)
    return limit
