"""How long until it is over: RECOVERY's backlog, the pace it drains at, the expected time.

The backlog is what Sluice knows of: requests waiting in its queue, and the clients it told to
come back (return slots booked on the pacer's calendar, not yet redeemed or expired). Clients
that gave up, or were never refused by this Sluice, are not in it. The backlog drains at what
the backend absorbs (the gate's pace estimate) less what fresh traffic takes of it (the arrival
baseline, learnt before the incident); the expected time to drain is one over the other, and
never earlier than the last booked return: a client told to come back in 12 s is not served
before then, however fast the backend is (the calendar was paced at what the pace was when it
booked, often lower than now, so without this bound the ETA fell to seconds while the last
returns were still 10 s out).

Pure: `estimate_drain` takes the numbers, `gate_drain` reads them off the gate once per tick
(gauges) or per `/status` request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..control.modes import Mode

if TYPE_CHECKING:
    from ..admission.gate import AdmissionGate


@dataclass(frozen=True, slots=True)
class DrainEstimate:
    """RECOVERY's backlog, the pace it drains at, and the expected time to drain it."""

    queued: int  # requests waiting in Sluice's queue
    booked: int  # return slots booked and still live
    pace: float  # requests/s the backlog drains at (never negative)
    # Seconds until the backlog is drained; None when it does not drain at `pace` (0/s: fresh
    # traffic takes all the backend serves, or nothing is measured yet).
    eta: float | None

    @property
    def backlog(self) -> int:
        """Everything Sluice knows is still to be served: queued plus booked to return."""
        return self.queued + self.booked


def estimate_drain(
    queued: int,
    booked: int,
    pace: float,
    baseline: float | None,
    last_return: float = 0.0,
    min_share: float = 0.0,
) -> DrainEstimate:
    """The drain of `queued` + `booked` requests at the backend's `pace` (requests/s) less the
    fresh arrivals' `baseline` (requests/s; None before one is learnt, taken as 0) but never
    under `min_share` of the pace (what the pacer and the wait model keep for the backlog:
    `shedding.min_return_share`), ending no earlier than `last_return` (seconds until the
    latest booked return is due)."""
    if queued < 0 or booked < 0:
        raise ValueError(f"a backlog cannot be negative (queued {queued}, booked {booked})")
    # Without the share's floor a pace barely above the baseline (a limit still ramping) read
    # as an ETA of minutes for a drain of seconds (sweep seed 1: 355 s at +2 s).
    drain_pace = max(0.0, pace - (baseline or 0.0), pace * min_share)
    backlog = queued + booked
    if backlog == 0:
        eta: float | None = 0.0
    elif drain_pace > 0.0:
        eta = backlog / drain_pace
        if booked:
            eta = max(eta, last_return)
    else:
        eta = None
    return DrainEstimate(queued, booked, drain_pace, eta)


def gate_drain(gate: AdmissionGate) -> DrainEstimate | None:
    """The gate's drain estimate in RECOVERY; None in every other mode."""
    if gate.modes.state is not Mode.RECOVERY:
        return None
    return estimate_drain(
        # Only the returns it booked: in a fleet each sidecar books for the returns the
        # balancer spreads over all of them, so its own bookings are its share of the backlog.
        gate.queue.total,
        gate.pacer.own_total,
        gate.estimates.pace,
        gate.control.rates.baseline,
        gate.pacer.next_free(gate.now()),
        gate.config.shedding.min_return_share,
    )
