"""The access log (`sluice.access`, one JSON line per answer) and the upstream failure log
(`sluice.upstream`, one line per failed upstream call, with its cause).

What a line costs is decided before it is built. A forwarded success is logged with the
probability `logging.access_log_sample`. Everything else (Sluice's own answers, forwarded
errors, upstream failures) is logged every one while `logging.lines_per_s` allows (a
`LineBudget`); past that a line is only counted, and one line a second says how many were left
out, by reason. A storm of 20,000 refusals a second so costs a token-bucket check and a counter
per refusal, never a formatted line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..config import LoggingConfig
from ..contracts import Outcome, Reason, Ticket
from ..logs import LineBudget
from ..upstream import UpstreamError

access_logger = logging.getLogger("sluice.access")
upstream_logger = logging.getLogger("sluice.upstream")

# Bounds on what a line copies from a request (its size must not be the client's choice).
MAX_PATH = 200
MAX_ID = 128
MAX_MESSAGE = 300
# How long after the first line left out the count of those left out is logged.
SUMMARY_EVERY = 1.0

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; a later version may append
# fields after another dash (https://www.w3.org/TR/trace-context/#traceparent-header).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-|$)")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16

Clock = Callable[[], float]


class OwnAnswer(web.Response):
    """An answer Sluice makes itself (`forward.refusal_response`): its reason rides along so
    the access log need not look it up in the headers. Told apart by `type(resp) is
    OwnAnswer`: aiohttp's responses are ABCs, and `isinstance` on one costs a microsecond."""

    sluice_reason: Reason


class RelayedStream(web.StreamResponse):
    """A streamed upstream answer; `body_sent` counts the body bytes relayed so far."""

    body_sent = 0


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header, or None when it is absent or invalid
    (malformed, version `ff`, an all-zero trace or parent id, version 00 with extra fields)."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent)
    if match is None:
        return None
    version, trace, parent, more = match.groups()
    if version == "ff" or trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    if version == "00" and more:
        return None  # version 00 has exactly four fields
    return trace


def bounded_path(raw_path: str) -> str:
    """The request target's path, without its query (which may carry secrets), cut at
    `MAX_PATH` characters."""
    return raw_path.partition("?")[0][:MAX_PATH]


def peer_host(peername: object) -> str:
    """The address part of a transport's `peername` (`"unknown"` when there is none)."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "unknown" if peername is None else str(peername)


def body_bytes(resp: web.StreamResponse, method: str | None) -> int:
    """The body bytes of an answer: relayed so far for a stream, the whole body otherwise
    (none for HEAD)."""
    if isinstance(resp, RelayedStream):
        return resp.body_sent
    if method == "HEAD" or not isinstance(resp, web.Response):
        return 0
    body = resp.body
    return len(body) if isinstance(body, bytes | bytearray) else 0


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def access_fields(
    request: web.BaseRequest | None,
    peer: str,
    resp: web.StreamResponse,
    ticket: Ticket | None,
    outcome: Outcome | None,
    waited: float | None,
    mode: str,
    now: float,
) -> dict[str, Any]:
    """The fields of one access-log line. `request` is None for an answer to input that never
    became a request (the guard's); `ticket` None before the request was classified; `outcome`
    None when nothing was forwarded; `waited` the seconds queued, `now` monotonic seconds."""
    method = request.method if request is not None else None
    reason = resp.sluice_reason.value if type(resp) is OwnAnswer else None
    if ticket is not None:
        request_id: str | None = ticket.request_id
    else:
        request_id = resp.headers.get("x-request-id")
    error = outcome.error if outcome is not None else None
    return {
        "peer": peer,
        "method": method,
        "path": bounded_path(request.raw_path) if request is not None else None,
        "status": resp.status,
        "reason": reason,
        "mode": mode,
        "caller": ticket.caller_label if ticket is not None else None,
        "retry": ticket.is_retry if ticket is not None else None,
        "queue_ms": _ms(waited) if waited is not None else None,
        "upstream_ms": _ms(outcome.latency) if outcome is not None else None,
        "upstream_error": error if error != "cancelled" else None,
        "total_ms": _ms(now - ticket.arrived) if ticket is not None else None,
        "bytes": body_bytes(resp, method),
        "request_id": request_id[:MAX_ID] if request_id else None,
        "trace_id": trace_id(request.headers.get("traceparent")) if request is not None else None,
    }


class PacedLines:
    """A logger's lines through a `LineBudget`. What the budget refuses is counted by key and
    logged as one line `every` seconds after the first refusal (a timer on the running loop),
    so a quiet log hears about the end of a storm too."""

    def __init__(
        self, logger: logging.Logger, level: int, clock: Clock, every: float = SUMMARY_EVERY
    ) -> None:
        self.logger = logger
        self.level = level
        self.clock = clock
        self.every = every
        self.budget = LineBudget(clock())
        self.counts: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def allow(self, key: str, rate: float) -> bool:
        """True if a line may be written now; otherwise it is counted under `key`."""
        if self.budget.allow(self.clock(), rate):
            return True
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.every, self.flush)
        return False

    def flush(self) -> None:
        """Log how many lines were left out since the last such line, by key."""
        self._timer = None
        suppressed = self.budget.take_suppressed()
        counts, self.counts = self.counts, {}
        if suppressed:
            self.logger.log(
                self.level,
                "lines suppressed",
                extra={"suppressed": suppressed, "by_reason": counts},
            )


class AccessLog:
    """The access log: `answer` once per answer. `settings` is read per answer, so a reload's
    logging settings apply at once; `mode` names the mode now (only called for a line written).
    """

    def __init__(
        self,
        settings: Callable[[], LoggingConfig],
        mode: Callable[[], str],
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.clock = clock
        self.lines = PacedLines(access_logger, logging.INFO, clock)

    def answer(
        self,
        request: web.BaseRequest | None,
        peer: str,
        resp: web.StreamResponse,
        ticket: Ticket | None = None,
        outcome: Outcome | None = None,
        waited: float | None = None,
    ) -> None:
        """Log one answer (see the module's docstring for which are sampled, which paced)."""
        cfg = self.settings()
        if not cfg.access_log:
            return
        if type(resp) is OwnAnswer:  # not isinstance: see OwnAnswer
            if not self.lines.allow(resp.sluice_reason.value, cfg.lines_per_s):
                return
        elif outcome is not None and outcome.good:
            if random.random() >= cfg.access_log_sample:
                return
        elif not self.lines.allow("forwarded" if outcome is not None else "other", cfg.lines_per_s):
            return
        fields = access_fields(
            request, peer, resp, ticket, outcome, waited, self.mode(), self.clock()
        )
        access_logger.info("answer", extra=fields)


def failure_fields(exc: UpstreamError, request_id: str | None, stage: str) -> dict[str, Any]:
    """The fields of an upstream failure line: its kind, the error and what caused it (the
    exception the client caught: `ConnectionRefusedError`, `SSLCertVerificationError`...),
    the message cut at `MAX_MESSAGE` characters."""
    cause = exc.__cause__ or exc.__context__
    return {
        "kind": exc.kind,
        "stage": stage,
        "error": type(exc).__name__,
        "cause": type(cause).__name__ if cause is not None else None,
        "detail": str(exc)[:MAX_MESSAGE],
        "request_id": request_id[:MAX_ID] if request_id else None,
    }


class UpstreamFailureLog:
    """Upstream connect, TLS, read and protocol failures, each with its cause, paced like the
    access log's own answers (by `logging.lines_per_s`, on a budget of their own)."""

    def __init__(
        self, settings: Callable[[], LoggingConfig], clock: Clock = time.monotonic
    ) -> None:
        self.settings = settings
        self.lines = PacedLines(upstream_logger, logging.WARNING, clock)

    def failed(self, exc: UpstreamError, request_id: str | None, stage: str) -> None:
        """Log one failure; `stage` is where it happened: `request` (before the answer's
        headers), `deadline` (the client's deadline came first; the backend's answer is still
        read, its slot held), `body` (while relaying the answer) or `probe`."""
        if self.lines.allow(exc.kind, self.settings().lines_per_s):
            upstream_logger.warning("upstream failed", extra=failure_fields(exc, request_id, stage))
