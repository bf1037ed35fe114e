"""Connection-level protections in front of the request path.

aiohttp parses requests well but leaves four doors open for a proxy in the path of every
identity request:

* **slowloris**: nothing times the first request's line and headers after accept (aiohttp's
  keep-alive timer starts at accept too, but it is the long `keepalive_timeout`, not a header
  budget). `GuardedRequestHandler` closes a connection whose request line and headers have not
  all arrived within `listen.header_read_timeout`, counted from accept for the first request and
  from the first byte of each later request on a kept-alive connection. A connection that sent
  nothing is closed silently (a pre-connect is not an error); one that sent part of a request
  gets `408` first.
* **error answers**: on a parse error aiohttp answers a plain-text 400 that echoes the
  offending bytes back and logs a traceback per bad request (a log flood on demand). Here every
  parse error becomes the reason table's JSON body with `x-sluice-reason: bad-request`:
  414 for an over-long request line, 431 for an over-long header field or too many of them,
  400 for everything else (`badinput.classify_parse_error`), counted per kind and logged at
  most once per `_LOG_EVERY` seconds.
* **framing**: llhttp (aiohttp's C parser) already refuses `Content-Length` with
  `Transfer-Encoding`, duplicate `Content-Length` (even equal ones), unknown or non-final
  transfer codings, obs-fold, and CR, LF or NUL inside a header value; those refusals happen
  before a request exists, so nothing can be forwarded. On top of that the guard refuses what
  parses but must not be proxied (`badinput.screen`): `Transfer-Encoding` in an HTTP/1.0
  request (RFC 9112 §6.1: the framing is faulty), `CONNECT`, and WebSocket upgrades (Sluice
  strips `Upgrade`; after one, aiohttp stops parsing the connection as HTTP).

* **bodies**: a parse error inside a request body (a broken chunk) is queued by aiohttp
  behind the request it broke, which then waits for body bytes that can never come, holding
  its upstream slot; the guard fails that body at once (the request is answered 400). Bodies
  that merely stall, and clients that stop reading a streamed answer, are timed in
  `forward.py` (408, and an aborted connection).

The limits themselves (line, field, header count, keep-alive) are read from the config in
force when a connection is accepted, so a reload applies them to new connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion11
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from prometheus_client import Counter

from ..admission.classify import new_request_id
from ..config import ListenConfig
from ..contracts import Reason, Refusal
from ..ops.classifier_counters import CountingInvalidHeaders, CountingRetrySignals
from ..ops.metrics import Metrics
from .accesslog import AccessLog, OwnAnswer, peer_host
from .badinput import BAD_INPUT_KINDS, classify_parse_error, screen
from .forward import SERVER, refusal_response
from .request_body import BrokenRequestBody

# Re-exported: these lived here before `badinput.py` and `metrics.py` took them.
__all__ = [
    "BAD_INPUT_KINDS",
    "CountingInvalidHeaders",
    "CountingRetrySignals",
    "Guard",
    "GuardedAppRunner",
    "GuardedRequestHandler",
    "GuardedServer",
    "LoggingServer",
    "classify_parse_error",
    "screen",
]

log = logging.getLogger("sluice.guard")

# A refused-input warning is logged at most this often (the counter has every one).
_LOG_EVERY = 10.0

_408_BODY = b'{"reason":"bad-request","message":"request line and headers took too long"}'
_408_HEAD = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    b"x-sluice-reason: bad-request\r\n"
    b"Server: " + SERVER.encode() + b"\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n" % len(_408_BODY)
)


def _408(request_id: str) -> tuple[bytes, OwnAnswer]:
    """The 408 written straight to the transport (there is no request to answer through
    aiohttp), and the same answer as a response for the access log."""
    raw = _408_HEAD + b"x-request-id: " + request_id.encode() + b"\r\n\r\n" + _408_BODY
    logged = OwnAnswer(status=408, body=_408_BODY, headers={"x-request-id": request_id})
    logged.sluice_reason = Reason.BAD_REQUEST
    return raw, logged


class Guard:
    """Shared state of the connection guard: the live listen config, counters, log pacing,
    and the access log its answers go to (`access`: set by `GuardedServer` from the server it
    guards, when that server is a `LoggingServer`)."""

    def __init__(self, listen: Callable[[], ListenConfig], metrics: Metrics) -> None:
        self.listen = listen
        self.metrics = metrics
        self.access: AccessLog | None = None
        self.bad_input = Counter(
            "sluice_bad_input",
            "Requests or connections refused for malformed, oversized or slow input, by kind.",
            ["kind"],
            registry=metrics.registry,
        )
        self.kind = {k: self.bad_input.labels(k) for k in BAD_INPUT_KINDS}
        self.refused = metrics.refused[Reason.BAD_REQUEST]
        self._last_log = -_LOG_EVERY
        self._unlogged = 0

    def count(self, kind: str, peer: object, detail: str) -> None:
        """Count one refusal; log a warning at most once per `_LOG_EVERY` seconds."""
        self.kind[kind].inc()
        now = time.monotonic()
        if now - self._last_log < _LOG_EVERY:
            self._unlogged += 1
            return
        log.warning(
            "bad input refused",
            extra={
                "kind": kind,
                "peer": str(peer),
                "detail": detail[:200],
                "not_logged_since_last": self._unlogged,
            },
        )
        self._last_log = now
        self._unlogged = 0

    def refuse(self, kind: str, status: int, peer: object, detail: str) -> web.Response:
        """The reason table's bad-request answer; the connection closes after it."""
        self.count(kind, peer, detail)
        self.refused.inc()
        resp = refusal_response(Refusal(Reason.BAD_REQUEST, status, 0), new_request_id())
        resp.force_close()
        self.answered(peer, resp)
        return resp

    def answered(self, peer: object, resp: web.StreamResponse) -> None:
        """Log an answer the guard made, to input that never became a request."""
        if self.access is not None:
            self.access.answer(None, peer_host(peer), resp)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's RequestHandler plus a header-read timer and Sluice's answers to bad input."""

    __slots__ = ("_guard", "_header_bytes", "_header_timer")

    def __init__(self, manager: web.Server, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    # --- the header-read timer ----------------------------------------------------------
    def _arm(self) -> None:
        timeout = self._guard.listen().header_read_timeout
        if timeout > 0:
            self._header_bytes = 0
            self._header_timer = self._loop.call_later(timeout, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        peer = transport.get_extra_info("peername")
        if self._header_bytes:
            self._guard.count("header-timeout", peer, f"{self._header_bytes} bytes, incomplete")
            self._guard.refused.inc()
            raw, logged = _408(new_request_id())
            transport.write(raw)
            self._guard.answered(peer, logged)
        else:
            self._guard.count("header-timeout", peer, "no request sent")
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """aiohttp's, and the first request's header-read timer starts."""
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        """aiohttp's, after stopping the header-read timer."""
        self._disarm()
        super().connection_lost(exc)

    def close(self) -> None:
        """What the drain calls as the listener closes: a connection with a request in hand
        closes after its answer (aiohttp's); one with none closes now. aiohttp's own would
        stop reading it yet leave it open until teardown, so a request sent on it then (on a
        pooled keep-alive connection, or one accepted in that instant) would wait unanswered
        to the drain's deadline; closed, it is retried elsewhere at once, never processed."""
        if self._request_in_progress or self._messages:
            super().close()
        else:
            self.force_close()

    def data_received(self, data: bytes) -> None:
        """aiohttp's parsing, timed: the timer (re)starts with the first byte of a request on
        a kept-alive connection and stops once its headers are parsed, which are screened."""
        waiter = self._waiter
        # Idle between requests on a kept-alive connection: these bytes start a new request.
        starts = (
            self._header_timer is None
            and waiter is not None
            and not waiter.done()
            and not self._messages
        )
        before = self._request_count
        super().data_received(data)
        parsed = self._request_count - before
        if parsed:
            # Request line and headers are complete (or refused): the timer's work is done.
            self._disarm()
            self._check_messages(parsed)
            return
        if starts:
            self._arm()  # only when the headers did not all come at once (no timer otherwise)
        if self._header_timer is not None:
            self._header_bytes += len(data)

    def _check_messages(self, parsed: int) -> None:
        messages = self._messages
        n = len(messages)
        for i in range(max(0, n - parsed), n):
            message, payload = messages[i]
            if isinstance(message, _ErrInfo):
                self._fail_open_bodies(message)
                continue
            if (
                message.version is HttpVersion11
                and message.path.startswith("/")
                and not message.upgrade
                and message.method != "CONNECT"
            ):
                continue  # the common case, decided without a call
            screened = screen(message)
            if isinstance(screened, RawRequestMessage):
                messages[i] = (screened, payload)
            else:
                kind, detail = screened
                messages[i] = (_ErrInfo(400, BadHttpMessage(detail), kind), payload)

    def _fail_open_bodies(self, error: _ErrInfo) -> None:
        """A parse error while a request body is still open (a broken chunk, say) happened
        inside that body, and nothing more will ever be fed to it: fail it now, or the
        request (and its upstream slot) waits for bytes that cannot come."""
        exc = BrokenRequestBody(f"request body broken: {error.exc}")
        open_bodies = [p for m, p in self._messages if not isinstance(m, _ErrInfo)]
        if self._current_request is not None:
            open_bodies.append(self._current_request.content)
        failed = 0
        for payload in open_bodies:
            if not payload.is_eof():
                payload.set_exception(exc)
                failed += 1
        if failed:
            # That request is answered 400 and the connection closed, so the queued error
            # is never answered on its own: count it here.
            kind, _ = classify_parse_error(error.exc, self._guard.listen())
            peer = self.transport.get_extra_info("peername") if self.transport else None
            self._guard.count(kind, peer, f"inside a request body: {error.exc}")

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's, except for a request body the guard broke on purpose."""
        # After answering a broken body, aiohttp's lingering read meets the error set above
        # and logs it as unhandled (a traceback per attack): it was handled, and counted.
        if isinstance(kw.get("exc_info"), BrokenRequestBody):
            log.debug("broken request body, connection closed")
            return
        super().log_exception(*args, **kw)

    # --- answers to bad input -------------------------------------------------------------
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A parse error or a screened request gets the reason table's bad-request answer
        (414, 431 or 400), counted; any other error is aiohttp's, saying `Server: sluice`."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if status != 400 or exc is None or not isinstance(exc, HttpProcessingError):
            resp = super().handle_error(request, status, exc, message)
            resp.headers["Server"] = SERVER
            self._guard.answered(peer, resp)
            return resp
        if isinstance(exc, BadHttpMessage) and message in BAD_INPUT_KINDS:
            kind, code = message, 400  # refused by _check_messages
        else:
            kind, code = classify_parse_error(exc, self._guard.listen())
        return self._guard.refuse(kind, code, peer, getattr(exc, "message", "") or str(exc))


class LoggingServer(web.Server):
    """aiohttp's low-level server, carrying the access log for the guard put around it
    (the two are built apart: `app.build_proxy_server`, then `GuardedServer`)."""

    def __init__(self, handler: Any, access: AccessLog, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.access = access


class GuardedServer(web.Server):
    """aiohttp's low-level server whose connections are `GuardedRequestHandler`s."""

    def __init__(self, base: web.Server, guard: Guard) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.guard = guard
        if isinstance(base, LoggingServer):
            guard.access = base.access

    def __call__(self) -> RequestHandler:
        listen = self.guard.listen()
        kwargs = dict(self._kwargs)
        # Limits in force now apply to this connection (a reload reaches new connections).
        kwargs.update(
            max_line_size=listen.max_line_size,
            max_field_size=listen.max_field_size,
            max_headers=listen.max_headers,
            keepalive_timeout=listen.keepalive_timeout,
        )
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **kwargs)


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose server hands every connection to the guard."""

    __slots__ = ("_guard",)

    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self._guard)
