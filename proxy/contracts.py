"""The seams between the request path and the admission engine.

The request path (app.py) classifies a request into a `Ticket`, asks the gate for a decision,
forwards when admitted and always reports an `Outcome`. Everything the gate needs crosses
here, so the gate stays pure and testable without sockets.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from .config import Config


class Reason(enum.StrEnum):
    """Why Sluice answered a request itself (README, "Answers Sluice makes itself"): the
    closed set of `x-sluice-reason` values. A StrEnum, so a member equals, hashes and formats
    as its plain string: metric labels, headers and JSON carry the value (`"caller-cap"`),
    never the member's name."""

    OVERLOAD = "overload"
    CALLER_CAP = "caller-cap"
    RETRY_BUDGET = "retry-budget"
    SPILLOVER = "spillover"
    SHIELD = "shield"
    OUTAGE = "outage"
    DEADLINE = "deadline"
    DRAINING = "draining"
    BUSY = "busy"
    UPSTREAM_CONNECT = "upstream-connect"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UPSTREAM_ERROR = "upstream-error"
    BAD_REQUEST = "bad-request"


# The statuses each reason may be sent with: `overload` is 429 under
# `shedding.overload_status: 429`, and `bad-request` covers malformed (400), too-slow (408) and
# oversized (413/414/431) input. Tests and the load-test harness judge answers against this one
# table.
REASONS: Mapping[Reason, frozenset[int]] = MappingProxyType(
    {
        Reason.OVERLOAD: frozenset({503, 429}),
        Reason.CALLER_CAP: frozenset({429}),
        Reason.RETRY_BUDGET: frozenset({429}),
        Reason.SPILLOVER: frozenset({503}),
        Reason.SHIELD: frozenset({503}),
        Reason.OUTAGE: frozenset({503}),
        Reason.DEADLINE: frozenset({504}),
        Reason.DRAINING: frozenset({503}),
        Reason.BUSY: frozenset({503}),
        Reason.UPSTREAM_CONNECT: frozenset({502}),
        Reason.UPSTREAM_TIMEOUT: frozenset({504}),
        Reason.UPSTREAM_ERROR: frozenset({502}),
        Reason.BAD_REQUEST: frozenset({400, 408, 413, 414, 431}),
    }
)


# Upstream error kinds reported in an Outcome (bounded: they are metric labels).
UPSTREAM_ERRORS: tuple[str, ...] = ("connect", "timeout", "reset", "protocol")


@dataclass(slots=True)
class Ticket:
    """One request as the gate sees it: built by classify, never from raw user strings."""

    caller: str  # configured caller name, or "bucket-N" for hashed unknown callers
    caller_label: str  # metric label: a configured name or "other"
    caller_index: int  # 0..K-1 configured callers, K..K+B-1 fair buckets
    priority: int  # index into PRIORITY_CLASSES, 0 = highest
    # Zero-based, from an attempt header or the sightings of a per-call id; None when nothing
    # tells (proxy/admission/retries.py).
    attempt: int | None
    is_retry: bool  # attempt > 0, or a repeat after an unspent failure of the same request
    origin_region: str | None  # None = local traffic
    arrived: float  # monotonic seconds
    deadline: float | None  # monotonic seconds by which the client needs an answer
    request_id: str
    fingerprint: int = 0  # (caller, method, path+query): identical for every pod of an identity
    # The request's per-call id (hashed; 0 = none): what its own retries are recognised by,
    # and what a return slot booked for it is redeemed by.
    call_key: int = 0
    solicited: bool = False  # set by the gate: the caller came back in a slot we booked
    # Owned by the gate: its per-caller accounting for an admitted ticket (None otherwise),
    # so `release` finds it without a lookup and a second release is a no-op.
    gate_state: Any = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """An explicit answer instead of forwarding: status, reason and when to come back."""

    reason: Reason
    status: int
    retry_after_ms: int  # 0 = send no Retry-After; counted from the end of `hold`
    # Seconds to hold the answer before sending it (a paced answer, see
    # `shedding.hold_max`); 0 = answer at once.
    hold: float = 0.0


@dataclass(slots=True)
class Outcome:
    """What happened upstream for an admitted ticket (reported exactly once)."""

    status: int | None  # None when no response arrived
    latency: float  # seconds from forwarding to response headers (or failure)
    error: str | None = None  # one of UPSTREAM_ERRORS, "cancelled", or None
    # Of `latency`, how much longer than on an idle loop the answer may have waited for our
    # own event loop to read it (`edge.arrival.ArrivalClock.late`): the backend's own
    # latency was about latency - slack.
    slack: float = 0.0
    # The client was answered at its deadline but the backend still works on the request: its
    # slot stays taken until the backend's late answer (which the forwarder releases with),
    # so that in-flight counts what the backend holds.
    held: bool = False

    @property
    def good(self) -> bool:
        """An answer below 500 and not 429: neither an error, pushback nor a backend fault."""
        status = self.status
        return self.error is None and status is not None and status < 500 and status != 429


class Deferred(Protocol):
    """A queued decision: await `wait()` for admission (None) or a Refusal."""

    async def wait(self) -> Refusal | None: ...


Probe = Callable[[], Awaitable[bool]]


class Gate(Protocol):
    """Admission control in front of the upstream.

    `admit` answers in O(1): None (admitted, a slot is held), a Refusal, or a Deferred to
    await. Whenever the final answer is None, `release` must be called exactly once.
    """

    def admit(self, ticket: Ticket) -> Refusal | Deferred | None: ...

    def release(self, ticket: Ticket, outcome: Outcome) -> None: ...

    def upstream_refusal(self, ticket: Ticket, status: int) -> Refusal | None:
        """The answer to send instead of the upstream's answer `status` to an admitted
        `ticket` (say, `503 outage` for a 5xx while the backend is known to be down), or None
        to relay the upstream's answer. Asked before any byte of it is sent."""
        ...

    def calm(self) -> bool:
        """No surge in hand (NORMAL, not draining): background work may take the CPU."""
        ...

    @property
    def mode_name(self) -> str:
        """The mode now, as `/status` names it (`NORMAL`, `OUTAGE`, `RECOVERY`, `SHIELD`)."""
        ...

    def reconfigure(self, config: Config) -> None: ...

    async def start(self, probe: Probe) -> None: ...

    async def drain(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def command(self, action: str, **params: Any) -> dict[str, Any]: ...
