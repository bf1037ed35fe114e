"""Telling a retry from a repeat (README, "How a retry is told from a repeat"): the bounded
memories behind the classifier.

Signals, most trusted first:
1. an attempt header (`x-retry-attempt` and its aliases, `amz-sdk-request: attempt=N`): the
   classifier parses it, and it decides alone, either way;
2. a per-call id that SDKs keep across their own retries (`x-ms-client-request-id`,
   `amz-sdk-invocation-id`): it decides alone. Seen again, a retry, the count of sightings its
   attempt number (`CallIds`); new, a new call (a first try);
3. only where neither exists, the request's fingerprint (caller, client address, method, path
   and query): each failure of a request with that fingerprint (refused by Sluice, a 5xx/429
   or timeout from the backend, a client that left before its answer) lets at most one later
   repeat count as a retry (`FailureCredits`).

Identical requests are normal for token services (every pod of one identity sends the same
URL), so a repeat after a success, or two identical requests in flight at once, prove
nothing. The retries counted by fingerprint never exceed the failures that could have caused
them. Both memories are LRU-bounded: memory stays fixed whatever arrives.

In a fleet (`fleet.redis`), first sightings of call ids and failures are written to a
`journal` for the fleet link, and the peers' are added here (`foreign`, `foreign_failure`), so
a retry that the balancer sends to another sidecar is still a retry there. Peers' entries
share the same bounds.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

# Signal labels, in trust order (bounded: they are metric labels).
SIGNAL_ATTEMPT = "attempt-header"
SIGNAL_CALL_ID = "call-id"
SIGNAL_FINGERPRINT = "fingerprint"
SIGNALS: tuple[str, ...] = (SIGNAL_ATTEMPT, SIGNAL_CALL_ID, SIGNAL_FINGERPRINT)
BY_ATTEMPT, BY_CALL_ID, BY_FINGERPRINT = range(len(SIGNALS))  # indexes for the counters

MAX_CALL_ID = 128  # longer ids are garbage: ignored and counted as invalid
_MAX_CREDITS = 255  # failures remembered per fingerprint (bounded, far above any real burst)


def parse_amz_sdk_request(text: str) -> int | None:
    """The zero-based attempt of AWS SDKs' `amz-sdk-request: attempt=N; max=M` (N from 1), or
    None for a malformed value."""
    if len(text) > 64:
        return None
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == "attempt":
            value = value.strip()
            if value.isdigit() and value.isascii() and 0 < len(value) <= 6 and int(value) > 0:
                return int(value) - 1
            return None
    return None


class SightingJournal(Protocol):
    """Where a fleet's sidecar writes the retry evidence it saw, for its peers."""

    def sighted(self, call_key: int, at: float) -> None:
        """A call id was seen for the first time at `at`."""

    def failed(self, fingerprint: int, at: float) -> None:
        """A request with this fingerprint failed at `at`."""


class CallIds:
    """Sightings of per-call ids within `ttl`: the n-th sighting of an id is attempt n-1."""

    def __init__(self, capacity: int, ttl: float) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._seen: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self.journal: SightingJournal | None = None  # set in a fleet

    def __len__(self) -> int:
        return len(self._seen)

    def foreign(self, key: int, at: float, now: float) -> None:
        """A peer saw `key` first at `at`: one earlier sighting here, unless we knew of it."""
        if self.capacity <= 0 or now - at > self.ttl:
            return
        seen = self._seen
        if key in seen:
            return
        seen[key] = (1, at)
        if len(seen) > self.capacity:
            seen.popitem(last=False)

    def sighting(self, key: int, now: float) -> int:
        """Record one sighting of `key`; return how many earlier ones fall within `ttl`."""
        if self.capacity <= 0:
            return 0
        seen = self._seen
        earlier = seen.pop(key, None)
        n = earlier[0] if earlier is not None and now - earlier[1] <= self.ttl else 0
        seen[key] = (n + 1, now)
        if len(seen) > self.capacity:
            seen.popitem(last=False)
        if not n and self.journal is not None:
            self.journal.sighted(key, now)
        return n


class FailureCredits:
    """Failures per fingerprint, each redeemable by one later repeat within `ttl` of the
    latest failure: the fingerprint signal never counts more retries than failures."""

    def __init__(self, capacity: int, ttl: float) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._credits: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self.journal: SightingJournal | None = None  # set in a fleet

    def __len__(self) -> int:
        return len(self._credits)

    def failed(self, fingerprint: int, now: float) -> None:
        """A request with this fingerprint failed: one later repeat may count as a retry."""
        if self.capacity <= 0:
            return
        if self.journal is not None:
            self.journal.failed(fingerprint, now)
        self.foreign_failure(fingerprint, now)

    def foreign_failure(self, fingerprint: int, now: float) -> None:
        """A failure of this fingerprint (here, or at a peer at `now` on our clock)."""
        if self.capacity <= 0:
            return
        credits = self._credits
        held = credits.pop(fingerprint, None)
        n, at = 0, now
        if held is not None and now - held[1] <= self.ttl:
            # A peer's failure can be older than one seen here: the latest one keeps its time.
            n, at = held[0], max(now, held[1])
        credits[fingerprint] = (min(n + 1, _MAX_CREDITS), at)
        if len(credits) > self.capacity:
            credits.popitem(last=False)

    def redeem(self, fingerprint: int, now: float) -> bool:
        """True (and one credit spent) when an earlier failure of this fingerprint is unspent."""
        credits = self._credits
        held = credits.get(fingerprint)
        if held is None:
            return False
        n, at = held
        if now - at > self.ttl or n <= 1:
            del credits[fingerprint]
            return now - at <= self.ttl
        credits[fingerprint] = (n - 1, at)
        return True


class RetryMemory:
    """The classifier's bounded state, kept across reloads (a retry is still a retry)."""

    def __init__(self, capacity: int, ttl: float) -> None:
        self.capacity = capacity
        self.call_ids = CallIds(capacity, ttl)
        self.failures = FailureCredits(capacity, ttl)

    def set_journal(self, journal: SightingJournal | None) -> None:
        """Write first sightings and failures to `journal` (a fleet's), or stop (None)."""
        self.call_ids.journal = journal
        self.failures.journal = journal

    def set_ttl(self, ttl: float) -> None:
        """Apply a reloaded `retry_detect.fingerprint_ttl`."""
        self.call_ids.ttl = ttl
        self.failures.ttl = ttl


class RetrySignalCounter:
    """Counts retries by the signal that recognised them (an index into SIGNALS)."""

    def __init__(self) -> None:
        self.counts = [0] * len(SIGNALS)

    def hit(self, signal: int) -> None:
        self.counts[signal] += 1
