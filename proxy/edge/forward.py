"""The upstream call: build the upstream request, stream bodies both ways, map failures.

Failures before the response headers become explicit answers (502 `upstream-connect` /
`upstream-error`, 504 `upstream-timeout`); a failure mid-body aborts the client connection so a
truncated body can never look complete.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import orjson
from aiohttp import web
from aiohttp.http_writer import HttpVersion11
from multidict import CIMultiDict

from ..config import Config
from ..contracts import Gate, Outcome, Reason, Refusal, Ticket
from ..headers import TrustedSources, set_forwarded, strip_hop_by_hop
from ..ops.metrics import Metrics
from ..upstream import (
    LateAnswer,
    UpstreamAbandoned,
    UpstreamClient,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
)
from .accesslog import OwnAnswer, RelayedStream, UpstreamFailureLog
from .arrival import ArrivalClock
from .request_body import BodyStream, RequestBodyError

# Bodies up to this size are read whole and sent with one write (cheaper than streaming).
_SMALL_BODY = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
# aiohttp's server already answered `Expect: 100-continue`; a backend that ignores it must not
# leave the upstream call waiting for a 100 that never comes.
_DROP_UPSTREAM = frozenset({"expect"})

# One message per reason: every reason Sluice can answer with has its body and headers here.
_MESSAGES: dict[Reason, str] = {
    Reason.OVERLOAD: "the backend is at its limit; come back after Retry-After",
    Reason.CALLER_CAP: "this caller is over its concurrency cap",
    Reason.RETRY_BUDGET: "retry budget exhausted for this caller; come back after Retry-After",
    Reason.SPILLOVER: "traffic from another region is not served here; retry in your own region",
    Reason.SHIELD: "traffic is removed while the backend is repaired",
    Reason.OUTAGE: "the backend is down; come back after Retry-After",
    Reason.DEADLINE: "the request's deadline passed before it could be served",
    Reason.DRAINING: "this proxy is shutting down",
    Reason.BUSY: "this proxy is saturated; come back after Retry-After",
    Reason.UPSTREAM_CONNECT: "could not connect to the backend",
    Reason.UPSTREAM_TIMEOUT: "the backend did not answer in time",
    Reason.UPSTREAM_ERROR: "the backend answered with an invalid or broken response",
    Reason.BAD_REQUEST: "malformed or oversized request",
}
_BODIES = {
    reason: orjson.dumps({"reason": reason.value, "message": msg})
    for reason, msg in _MESSAGES.items()
}
_ERROR_REFUSALS: dict[str, tuple[int, Reason]] = {
    "connect": (502, Reason.UPSTREAM_CONNECT),
    "timeout": (504, Reason.UPSTREAM_TIMEOUT),
    "reset": (502, Reason.UPSTREAM_ERROR),
    "protocol": (502, Reason.UPSTREAM_ERROR),
}


# What Sluice's own answers say in `Server` (no version: aiohttp's default names Python's and
# its own), and forwarded answers whose backend sent none.
SERVER = "sluice"

# Per reason, the headers every refusal for it carries, built once: a refusal copies its
# template (one C-level copy) instead of building a dict that aiohttp then converts.
_TEMPLATES = {
    reason: CIMultiDict(
        {"x-sluice-reason": reason.value, "Content-Type": "application/json", "Server": SERVER}
    )
    for reason in _MESSAGES
}


def refusal_response(refusal: Refusal, request_id: str | None) -> OwnAnswer:
    """The explicit answer for a refusal: status, `x-sluice-reason`, paced Retry-After, JSON."""
    reason = refusal.reason
    # aiohttp copies the template into the response's own headers (one C-level copy).
    resp = OwnAnswer(status=refusal.status, body=_BODIES[reason], headers=_TEMPLATES[reason])
    resp.sluice_reason = reason
    headers = resp.headers
    ms = refusal.retry_after_ms
    if ms > 0:
        headers["Retry-After"] = str(max(1, math.ceil(ms / 1000)))
        headers["retry-after-ms"] = str(ms)
    if reason == Reason.SPILLOVER:
        headers["x-sluice-no-failover"] = "1"
    if request_id:
        headers["x-request-id"] = request_id
    return resp


class Forwarder:
    """Sends admitted requests upstream through the shared client and streams the answer.

    Before relaying an upstream answer it asks the `gate` whether to send an answer of its
    own instead (`Gate.upstream_refusal`: `503 outage` for a 5xx while the backend is down).
    """

    def __init__(
        self,
        client: UpstreamClient,
        metrics: Metrics,
        gate: Gate,
        failures: UpstreamFailureLog,
        arrivals: ArrivalClock,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.gate = gate
        self.failures = failures
        # When an answer read now may have arrived: our loop's share of its latency.
        self.arrivals = arrivals
        # Requests answered at their client's deadline whose backend answer is still read,
        # each holding its gate slot: at most the limit in force, so bounded.
        self.lingering: set[asyncio.Task[None]] = set()

    async def forward(
        self,
        request: web.BaseRequest,
        ticket: Ticket,
        outcome: Outcome,
        config: Config,
        trusted: TrustedSources,
        peer: str,
    ) -> web.StreamResponse:
        """Forward `request`; fills `outcome` as soon as the upstream's fate is known."""
        headers, timeout = _upstream_headers(request, ticket, config, trusted, peer)
        body = None
        if request.body_exists:
            body = BodyStream(request, config.listen.max_body_size, timeout)
        # Past the client's deadline the backend (which does not know it left) still works
        # on the request until the upstream's own timeout: its answer is awaited that long,
        # holding the slot. With protection off Sluice is a plain proxy (no limit to keep
        # honest): the exchange is cut with its caller, as the unprotected arm's proxy does.
        holds = config.modes.protection != "off"
        linger = max(0.0, config.upstream.read_timeout - timeout) if holds else 0.0

        started = time.monotonic()
        on_cancel = self._keeper(ticket, outcome, started) if holds else None
        try:
            upstream = await self.client.send(
                UpstreamRequest(
                    request.method, request.raw_path, headers, body, timeout, linger, on_cancel
                )
            )
        except UpstreamAbandoned as exc:
            outcome.latency = time.monotonic() - started
            outcome.held = True  # released by `_linger` with the late answer
            self._hold(ticket, exc.late, started)
            return self._upstream_failed(exc, outcome, ticket.request_id, "deadline")
        except (UpstreamError, RequestBodyError) as exc:
            outcome.latency = time.monotonic() - started
            return self._send_failed(exc, body, outcome, ticket.request_id)

        now = time.monotonic()
        outcome.latency = now - started
        outcome.slack = min(outcome.latency, self.arrivals.late(now))
        outcome.status = upstream.status
        outcome.error = None  # answered: the gate learns from it (not "cancelled")
        metrics = self.metrics
        metrics.upstream_latency.observe(outcome.latency)
        instead = self.gate.upstream_refusal(ticket, upstream.status)
        if instead is not None:
            # A canary, or a request admitted just before the switch, met the broken backend:
            # the client gets the gate's answer (with when to come back), not the backend's
            # error. Nothing was sent yet; the gate still learns the 5xx from the outcome.
            upstream.release()
            metrics.refused[instead.reason].inc()
            return refusal_response(instead, ticket.request_id)
        metrics.forwarded.inc()
        try:
            return await self._respond(request, upstream, ticket.request_id, timeout, outcome)
        finally:
            upstream.release()

    def _keeper(
        self, ticket: Ticket, outcome: Outcome, started: float
    ) -> Callable[[LateAnswer], None]:
        """What the upstream client calls when the handler is cancelled (its client left)
        while the backend works on the request: as at its deadline, the slot waits for the
        backend's answer."""

        def on_cancel(late: LateAnswer) -> None:
            outcome.held = True
            self._hold(ticket, late, started)

        return on_cancel

    def _hold(self, ticket: Ticket, late: LateAnswer, started: float) -> None:
        """Keep `ticket`'s slot until the backend's late answer (`_linger`)."""
        task = asyncio.ensure_future(self._linger(ticket, late, started))
        self.lingering.add(task)
        task.add_done_callback(self.lingering.discard)

    async def _linger(self, ticket: Ticket, late: LateAnswer, started: float) -> None:
        """Read and discard the answer to a request its client no longer waits for, then
        release its slot with what the backend did: the late answer is a true latency sample
        (the client's deadline only censored it); none by the upstream's timeout, a timeout.

        Freeing the slot at the client's deadline instead would send the next request while
        the backend still holds this one: its queue fills with abandoned work that in-flight
        never shows (issue: a limit its own load cannot collapse)."""
        outcome = Outcome(None, 0.0, "cancelled")
        try:
            status = await late.status()
            now = time.monotonic()
            outcome.latency = now - started
            outcome.slack = min(outcome.latency, self.arrivals.late(now))
            outcome.status = status
            outcome.error = None
            self.metrics.upstream_latency.observe(outcome.latency)
            await late.finish()
        except UpstreamError as exc:  # (counted once, as the client's 504)
            outcome.latency = time.monotonic() - started
            outcome.error = exc.kind
        finally:
            late.close()
            self.gate.release(ticket, outcome)

    async def close(self) -> None:
        """Cut the late answers still awaited (shutdown): their slots are released."""
        tasks = list(self.lingering)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _send_failed(
        self,
        exc: UpstreamError | RequestBodyError,
        body: BodyStream | None,
        outcome: Outcome,
        request_id: str,
    ) -> web.Response:
        """The answer when the upstream call failed before its response headers: the
        client's body failed (`bad-request`, connection closed), or the upstream did."""
        if body is not None and body.failed is not None:
            outcome.error = "cancelled"  # the client's fault, not the upstream's
            self.metrics.refused[Reason.BAD_REQUEST].inc()
            resp = refusal_response(Refusal(Reason.BAD_REQUEST, body.failed.status, 0), request_id)
            resp.force_close()  # the rest of the body is not worth reading
            return resp
        assert isinstance(exc, UpstreamError)
        return self._upstream_failed(exc, outcome, request_id)

    def _upstream_failed(
        self, exc: UpstreamError, outcome: Outcome, request_id: str, stage: str = "request"
    ) -> web.Response:
        """The explicit answer for an upstream failure before anything was sent: 504 when
        it timed out, else 502. The gate must not learn a success from it."""
        outcome.error = exc.kind
        self.metrics.upstream_error[exc.kind].inc()
        self.failures.failed(exc, request_id, stage)
        status, reason = _ERROR_REFUSALS[exc.kind]
        self.metrics.refused[reason].inc()
        return refusal_response(Refusal(reason, status, 1000), request_id)

    async def _respond(
        self,
        request: web.BaseRequest,
        up: UpstreamResponse,
        request_id: str,
        gap: float,
        outcome: Outcome,
    ) -> web.StreamResponse:
        """Relay the upstream's answer: headers only, a small body whole, or streamed."""
        out_headers = strip_hop_by_hop(up.headers)
        if "server" not in out_headers:  # or aiohttp would add its own, with versions
            out_headers["Server"] = SERVER
        length_text = out_headers.get("content-length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if request.method == "HEAD" or up.status in _NO_BODY_STATUS or up.status < 200:
            return await _relay_headers(request, up, out_headers, length)
        if length is not None and length <= _SMALL_BODY:
            return await self._relay_small(up, out_headers, request_id, outcome)
        return await self._relay_streamed(
            request, up, out_headers, length, gap, outcome, request_id
        )

    async def _relay_small(
        self,
        up: UpstreamResponse,
        out_headers: CIMultiDict[str],
        request_id: str,
        outcome: Outcome,
    ) -> web.Response:
        """A body of known, small length: read whole, then sent with one write."""
        parts = []
        try:
            while chunk := await up.read_chunk():
                parts.append(chunk)
        except UpstreamError as exc:
            # Nothing was sent yet, so the client can still get an explicit answer.
            return self._upstream_failed(exc, outcome, request_id, "body")
        del out_headers["content-length"]
        return web.Response(
            status=up.status, reason=up.reason, body=b"".join(parts), headers=out_headers
        )

    async def _relay_streamed(
        self,
        request: web.BaseRequest,
        up: UpstreamResponse,
        out_headers: CIMultiDict[str],
        length: int | None,
        gap: float,
        outcome: Outcome,
        request_id: str,
    ) -> web.StreamResponse:
        """A large or unknown-length body, chunk by chunk; a failure once the headers are
        sent aborts the client connection, so a truncated body never looks complete."""
        resp = RelayedStream(status=up.status, reason=up.reason, headers=out_headers)
        if length is None and request.version >= HttpVersion11:
            resp.enable_chunked_encoding()
        # An HTTP/1.0 client cannot take chunked framing: without a length the body is
        # close-delimited (aiohttp turns keep-alive off for it).
        await resp.prepare(request)
        try:
            while chunk := await up.read_chunk():
                # A client that stops reading must not hold the slot (and the upstream
                # connection) for as long as it likes: `gap` per write, as for the upstream.
                async with asyncio.timeout(gap):
                    await resp.write(chunk)
                resp.body_sent += len(chunk)
        except UpstreamError as exc:
            # Headers are gone: the only honest signal left is a broken connection.
            outcome.error = exc.kind
            self.metrics.upstream_error[exc.kind].inc()
            self.failures.failed(exc, request_id, "body")
            _abort(request)
            return resp
        except TimeoutError:
            _abort(request)  # the client stopped reading
            return resp
        await resp.write_eof()
        return resp


def _upstream_headers(
    request: web.BaseRequest,
    ticket: Ticket,
    config: Config,
    trusted: TrustedSources,
    peer: str,
) -> tuple[CIMultiDict[str], float]:
    """The headers the upstream gets (hop-by-hop stripped, forwarding and request id set, the
    time the client has left) and the upstream read timeout: `upstream.read_timeout`, or less
    when the request's deadline, less `shedding.deadline_margin`, comes sooner."""
    headers = strip_hop_by_hop(request.headers, _DROP_UPSTREAM)
    set_forwarded(
        headers,
        request.headers,
        peer,
        request.scheme,
        request.headers.get("host"),
        trusted.contains(peer),
    )
    rid_header = config.headers.request_id
    if rid_header not in request.headers:
        headers[rid_header] = ticket.request_id
    timeout = config.upstream.read_timeout
    if ticket.deadline is not None:
        remaining = ticket.deadline - time.monotonic() - config.shedding.deadline_margin
        timeout = max(0.001, min(timeout, remaining))
        headers[config.headers.request_timeout_ms] = str(max(1, int(remaining * 1000)))
    else:  # absent, or unusable and so treated as absent: the upstream must not see it
        headers.popall(config.headers.request_timeout_ms, None)
    return headers, timeout


async def _relay_headers(
    request: web.BaseRequest,
    up: UpstreamResponse,
    out_headers: CIMultiDict[str],
    length: int | None,
) -> web.StreamResponse:
    """An answer without a body (HEAD, 1xx, 204, 304): the headers, with a HEAD's length."""
    resp = web.StreamResponse(status=up.status, reason=up.reason, headers=out_headers)
    if length is not None and request.method == "HEAD":
        resp.content_length = length
    await resp.prepare(request)
    await resp.write_eof()
    return resp


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
