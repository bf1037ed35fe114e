"""What this sidecar learnt since the last exchange, for its peers: bounded, cheap to write.

The request path writes here (a booking, a redemption, a first sighting of a call id, a
failure): one bound check and an append each. The fleet link takes everything once per tick.
Past `cap` entries of a kind in one tick the rest are dropped and counted: a storm must not
grow memory, and a peer that misses a booking only takes that return for an unsolicited one.
Times are this process's monotonic clock, callers their index: `exchange` converts both at
the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Entries of one kind kept per tick. At 10 ticks a second, 40,000 bookings (or sightings) a
# second per sidecar: far above what one backend's sidecar sheds or serves.
JOURNAL_CAP = 4096

Booked = tuple[int, int, float, float]  # caller, key, start, end
Redeemed = tuple[int, int, float]  # caller, key, at
Seen = tuple[int, float]  # key or fingerprint, at


@dataclass(slots=True)
class Batch:
    """One tick's worth of what this sidecar learnt."""

    bookings: list[Booked] = field(default_factory=list)
    redemptions: list[Redeemed] = field(default_factory=list)
    call_ids: list[Seen] = field(default_factory=list)
    failures: list[Seen] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bookings) + len(self.redemptions) + len(self.call_ids) + len(self.failures)


class Journal:
    """Implements `pacing.BookingJournal` and `retries.SightingJournal` for the fleet link."""

    __slots__ = ("batch", "cap", "dropped")

    def __init__(self, cap: int = JOURNAL_CAP) -> None:
        self.cap = cap
        self.batch = Batch()
        self.dropped = 0  # entries not shared: over `cap` in a tick, or taken while unlinked

    def booked(self, caller: int, key: int, start: float, end: float) -> None:
        """A return was booked here."""
        entries = self.batch.bookings
        if len(entries) < self.cap:
            entries.append((caller, key, start, end))
        else:
            self.dropped += 1

    def redeemed(self, caller: int, key: int, at: float) -> None:
        """A return came back in its slot here (closes the booking at the peers)."""
        entries = self.batch.redemptions
        if len(entries) < self.cap:
            entries.append((caller, key, at))
        else:
            self.dropped += 1

    def sighted(self, call_key: int, at: float) -> None:
        """A call id was seen here for the first time."""
        entries = self.batch.call_ids
        if len(entries) < self.cap:
            entries.append((call_key, at))
        else:
            self.dropped += 1

    def failed(self, fingerprint: int, at: float) -> None:
        """A request with this fingerprint failed here."""
        entries = self.batch.failures
        if len(entries) < self.cap:
            entries.append((fingerprint, at))
        else:
            self.dropped += 1

    def take(self) -> Batch:
        """Everything since the last take (the journal starts empty again)."""
        batch, self.batch = self.batch, Batch()
        return batch

    def discard(self) -> None:
        """Drop what is held, counted (the link is down: it would be stale when it is back)."""
        self.dropped += len(self.take())
