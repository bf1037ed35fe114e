"""Request headers → `Ticket`: pure apart from the bounded retry memory.

Callers, priority and origin region are believed only from trusted peers (configured CIDRs);
anyone else is identified by its address. Unknown callers hash into a fixed number of fair-queue
buckets so every per-caller structure downstream stays bounded.
"""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from collections.abc import Callable, Mapping

from ..config import PRIORITY_CLASSES, Config
from ..contracts import Ticket
from ..headers import TrustedSources
from ..tuning import ADMISSION
from .retries import (
    BY_ATTEMPT,
    BY_CALL_ID,
    BY_FINGERPRINT,
    MAX_CALL_ID,
    RetryMemory,
    RetrySignalCounter,
    parse_amz_sdk_request,
)

_NORMAL_PRIORITY = PRIORITY_CLASSES.index("normal")
_PRIORITY_INDEX = {name: i for i, name in enumerate(PRIORITY_CLASSES)}
# Longest attempt / budget header value we bother to parse (anything longer is garbage).
_MAX_INT_TEXT = 12
_MAX_START_TEXT = 24  # a request-start time: microseconds since the epoch are 16 digits

# Request ids have uuid.uuid4().hex's form (32 hex digits, version 4, RFC 4122 variant) but
# come from a generator seeded once, not a syscall per id: they only correlate logs and need
# no secrecy (why: docs/design-notes.md, "Request ids").
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat the parent's
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def stable_hash(parts: tuple[str | None, ...]) -> int:
    """A 64-bit hash of `parts` that every process computes alike (Python's `hash` of a str is
    salted per process): the keys a fleet's sidecars share. None and "" differ."""
    text = "\x1f".join("\x00" if p is None else p for p in parts)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def new_request_id() -> str:
    """A fresh request id: 32 lowercase hex digits laid out like a version-4 UUID."""
    return f"{(_ids.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


class InvalidHeaderCounter:
    """Counts headers that were present but unusable (non-integer, negative, too long)."""

    def __init__(self) -> None:
        self.count = 0

    def hit(self) -> None:
        """Count one unusable header."""
        self.count += 1


def parse_nonneg_int(text: str | None) -> int | None:
    """A non-negative decimal integer, or None for absent or invalid values."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > _MAX_INT_TEXT or not text.isdigit() or not text.isascii():
        return None
    return int(text)


def parse_request_start(text: str) -> float | None:
    """Epoch milliseconds from a balancer's request-start header: an optional `t=` and a
    number of seconds (nginx's `$msec`: 1700000000.123), milliseconds, or microseconds
    (HAProxy's `%[date(0,us)]`), told apart by magnitude as Heroku's and New Relic's readers
    do; None when unusable."""
    text = text.strip()
    if text.startswith("t="):
        text = text[2:]
    if not text or len(text) > _MAX_START_TEXT or text.count(".") > 1:
        return None
    if not text.replace(".", "", 1).isdigit() or not text.isascii():
        return None
    value = float(text)
    if value >= 1e14:
        return value / 1000.0  # microseconds
    if value >= 1e11:
        return value  # milliseconds
    return value * 1000.0  # seconds


def _forwarded_for(headers: Mapping[str, str]) -> str | None:
    """Every `X-Forwarded-For` line, joined (a proxy may add its own line)."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return headers.get("x-forwarded-for")
    lines: list[str] = getall("x-forwarded-for", [])
    return ",".join(lines) if lines else None


class Classifier:
    """Turns a request's peer, method, target and headers into a `Ticket`.

    Built once per config snapshot; holds only bounded state (`RetryMemory`, handed on to
    the next snapshot on reload).
    """

    def __init__(self, config: Config, memory: RetryMemory | None = None) -> None:
        self.config = config
        h = config.headers
        self._h_caller = h.caller_id
        self._h_attempt = (h.retry_attempt, *h.attempt_aliases)
        self._h_region = h.origin_region
        self._h_priority = h.priority
        self._h_timeout = h.request_timeout_ms
        self._h_deadline = h.request_deadline_ms if config.trust.absolute_deadline else None
        self._h_start = h.request_start if config.trust.request_start else None
        self._h_request_id = h.request_id
        self._local_region = config.region.name
        self.trusted = TrustedSources(config.trust.sources)
        known = config.callers.known
        self._known_index = {c.name: i for i, c in enumerate(known)}
        self._known_priority = {c.name: _PRIORITY_INDEX[c.priority] for c in known}
        self._n_known = len(known)
        self._n_buckets = config.callers.fair_buckets
        self._bucket_names = [f"bucket-{i}" for i in range(self._n_buckets)]
        self._h_call_ids = tuple(h.call_ids)
        # In a fleet, fingerprints and call keys are shared with peers: they must hash alike
        # in every process. Standalone keeps the cheaper per-process `hash`.
        self._hash: Callable[[tuple[str | None, ...]], int] = (
            stable_hash if config.fleet.redis is not None else hash
        )
        ttl = config.retry_detect.fingerprint_ttl
        size = config.retry_detect.fingerprint_cache_size
        if memory is None or memory.capacity != size:
            memory = RetryMemory(size, ttl)
        memory.set_ttl(ttl)
        self.memory = memory
        self.invalid_headers = InvalidHeaderCounter()
        self.retry_signals = RetrySignalCounter()

    @property
    def caller_slots(self) -> int:
        """How many distinct caller indexes a Ticket can carry (configured + buckets)."""
        return self._n_known + self._n_buckets

    def caller_names(self) -> list[str]:
        """Every caller key in index order (configured callers, then buckets)."""
        return [c.name for c in self.config.callers.known] + self._bucket_names

    def _bucket(self, key: str) -> tuple[str, int]:
        b = zlib.crc32(key.encode("utf-8", "surrogateescape")) % self._n_buckets
        return self._bucket_names[b], self._n_known + b

    def classify(
        self,
        peer: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        now: float,
        wall_ms: float,
    ) -> Ticket:
        """Build the Ticket. `now` is monotonic seconds, `wall_ms` epoch milliseconds."""
        trusted = self.trusted.contains(peer)
        if trusted:
            peer = self.trusted.client_of(peer, _forwarded_for(headers))
        caller_id = headers.get(self._h_caller) if trusted else None
        caller, index, label, priority = self._caller(caller_id, peer)
        if trusted:
            p = headers.get(self._h_priority)
            if p is not None:
                priority = _PRIORITY_INDEX.get(p.strip().lower(), priority)
        attempt = self._attempt(headers)
        origin = self._origin(headers.get(self._h_region)) if trusted else None
        arrived = now
        if trusted and self._h_start is not None:
            arrived, wall_ms = self._started(headers.get(self._h_start), now, wall_ms)
        deadline = self._deadline(headers, arrived, wall_ms)

        # Who sent it as well as what: every pod of an identity sends the same request, and one
        # pod's failure says nothing about another's (pods differ by address).
        fingerprint = self._hash((caller_id, peer, method, path_qs))
        call_key = self._call_key(headers)
        if attempt is not None:
            is_retry = attempt > 0
            if is_retry:
                self.retry_signals.hit(BY_ATTEMPT)
        else:
            attempt, is_retry = self._recognise(call_key, fingerprint, now)

        request_id = headers.get(self._h_request_id) or new_request_id()
        return Ticket(
            caller=caller,
            caller_label=label,
            caller_index=index,
            priority=priority,
            attempt=attempt,
            is_retry=is_retry,
            origin_region=origin,
            arrived=arrived,
            deadline=deadline,
            request_id=request_id,
            fingerprint=fingerprint,
            call_key=call_key,
        )

    def _caller(self, caller_id: str | None, peer: str) -> tuple[str, int, str, int]:
        """(caller, index, metric label, priority) of a configured caller id; anyone else is
        hashed by its id (or, without one, its address) into a bucket, labelled `other`."""
        if caller_id is not None and caller_id in self._known_index:
            return (
                caller_id,
                self._known_index[caller_id],
                caller_id,
                self._known_priority[caller_id],
            )
        caller, index = self._bucket(caller_id if caller_id else peer)
        return caller, index, "other", _NORMAL_PRIORITY

    def _origin(self, region: str | None) -> str | None:
        """The region a request came from, when it is not ours (None: local or unknown)."""
        if region:
            region = region.strip()
            if region and region != self._local_region:
                return region[:64]
        return None

    def _started(self, raw: str | None, now: float, wall_ms: float) -> tuple[float, float]:
        """(monotonic, epoch ms) of when the balancer in front received the request, from its
        request-start header: the time it waited there, its client counted too. Not believed
        when later than `now` (its clock ahead of ours) or further back than
        `request_start_max` (behind): then `now`, as without the header."""
        if raw is None:
            return now, wall_ms
        start_ms = parse_request_start(raw)
        if start_ms is None:
            self.invalid_headers.hit()
            return now, wall_ms
        waited = (wall_ms - start_ms) / 1000.0
        if waited <= 0.0 or waited > ADMISSION.request_start_max:
            return now, wall_ms
        return now - waited, start_ms

    def _deadline(self, headers: Mapping[str, str], now: float, wall_ms: float) -> float | None:
        """The request's deadline on our monotonic clock, from its timeout header or (if
        trusted by config) its absolute deadline header; None without a usable one."""
        raw_timeout = headers.get(self._h_timeout)
        if raw_timeout is not None:
            ms = parse_nonneg_int(raw_timeout)
            if ms is None:
                self.invalid_headers.hit()
                return None
            return now + ms / 1000.0
        if self._h_deadline is not None:
            raw_deadline = headers.get(self._h_deadline)
            if raw_deadline is not None:
                epoch_ms = parse_nonneg_int(raw_deadline)
                if epoch_ms is None:
                    self.invalid_headers.hit()
                    return None
                return now + (epoch_ms - wall_ms) / 1000.0
        return None

    def _attempt(self, headers: Mapping[str, str]) -> int | None:
        """The zero-based attempt from the first attempt header present, or None."""
        for name in self._h_attempt:
            raw = headers.get(name)
            if raw is None:
                continue
            if name == "amz-sdk-request":
                attempt = parse_amz_sdk_request(raw)
            else:
                attempt = parse_nonneg_int(raw)
                # Envoy counts the first try as attempt 1; gRPC counts previous attempts.
                if attempt is not None and name == "x-envoy-attempt-count":
                    attempt = max(0, attempt - 1)
            if attempt is None:
                self.invalid_headers.hit()
            return attempt
        return None

    def _call_key(self, headers: Mapping[str, str]) -> int:
        """The hashed per-call id of the first call-id header present (0: none, or unusable:
        empty or over MAX_CALL_ID characters, counted as invalid)."""
        for name in self._h_call_ids:
            raw = headers.get(name)
            if raw is None:
                continue
            if not raw or len(raw) > MAX_CALL_ID:
                self.invalid_headers.hit()
                return 0
            return self._hash((name, raw)) or 1
        return 0

    def _recognise(self, call_key: int, fingerprint: int, now: float) -> tuple[int | None, bool]:
        """Without an attempt header: (attempt, is_retry). A per-call id decides alone: seen
        before, a retry (the count of sightings its attempt); new, a first try (a new call:
        many pods of one identity call at once, and one pod's failure says nothing about
        another's call). Without one, an unspent failure of the same fingerprint makes this
        a retry of unknown attempt; else nothing tells (None).
        """
        memory = self.memory
        if call_key:
            earlier = memory.call_ids.sighting(call_key, now)
            if earlier:
                self.retry_signals.hit(BY_CALL_ID)
            return earlier, earlier > 0
        if memory.failures.redeem(fingerprint, now):
            self.retry_signals.hit(BY_FINGERPRINT)
            return None, True
        return None, False

    def note_failure(self, ticket: Ticket, now: float) -> None:
        """A request failed (refused, 5xx/429, timed out, or its client left): one later
        repeat of it may count as a retry. Requests with a call id are recognised by it."""
        if not ticket.call_key:
            self.memory.failures.failed(ticket.fingerprint, now)
