"""One keep-alive upstream connection: an asyncio Protocol feeding httptools' response parser.

A connection serves one exchange at a time (no pipelining). The parser callbacks fill the
per-exchange state; the coroutine that owns the exchange (`LeanUpstream.send`, then
`LeanResponse.read_chunk`) waits on `wait()`, which any event wakes and a `call_at` timer
handle bounds. Response body bytes are buffered only up to HIGH_WATER: past it the socket is
not read until the caller takes the buffer (back-pressure all the way to the backend).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast

import httptools
from multidict import CIMultiDict

from .base import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResetError,
    UpstreamTimeoutError,
)

HIGH_WATER = 256 * 1024  # response body bytes buffered before the socket stops being read
_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
_EMPTY: CIMultiDict[str] = CIMultiDict()


class _HeadDone(Exception):
    """Raised in the parser callback to stop parsing after a HEAD response's headers.

    llhttp cannot be told that a response answers HEAD (it would wait for the body the headers
    announce), so it is stopped there, and the connection is not reused: the parser is spent,
    and an upstream that sends a body anyway (some frameworks do) would poison the next exchange.
    """


def _expire(fut: asyncio.Future[None], message: str) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeoutError(message))


class Connection(asyncio.Protocol):
    __slots__ = (
        "abandoned",
        "body_started",
        "buffered",
        "busy",
        "chunks",
        "done",
        "exc",
        "got_bytes",
        "head",
        "headers",
        "headers_done",
        "idle",
        "idle_since",
        "keep_alive",
        "loop",
        "on_lost",
        "owns_slot",
        "parser",
        "raw_headers",
        "read_paused",
        "reason",
        "req_done",
        "reused",
        "status",
        "transport",
        "waiter",
        "write_paused",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[Connection], None]
    ) -> None:
        self.loop = loop
        self.on_lost = on_lost
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set when made
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.owns_slot = False  # counts against the pool's size; freed once, when lost
        self.idle = False  # sits in the pool's idle deque
        self.idle_since = 0.0
        self.reused = False  # has served an exchange before (so it may have gone stale)
        self.write_paused = False
        self.read_paused = False
        self.chunks: list[bytes] = []  # body bytes not yet taken by read_chunk
        self.buffered = 0
        self.raw_headers: list[tuple[str, str]] = []
        self.begin(False)
        self.busy = False

    def begin(self, head: bool) -> None:
        """Reset the per-exchange state for a new request."""
        self.busy = True
        self.head = head
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = _EMPTY
        self.headers_done = False
        self.done = False  # the whole response has arrived
        self.keep_alive = False
        self.req_done = False  # the whole request has been written
        self.got_bytes = False
        self.body_started = False  # a body chunk was pulled from the request's iterator
        self.abandoned = False  # its caller left; a LateAnswer owns the exchange now
        self.exc: UpstreamError | None = None

    # -- waiting -------------------------------------------------------------------------------

    async def wait(self, when: float, message: str) -> None:
        """Sleep until the next event on this connection; UpstreamTimeoutError at `when`."""
        fut = self.loop.create_future()
        self.waiter = fut
        timer = self.loop.call_at(when, _expire, fut, message)
        try:
            await fut
        finally:
            timer.cancel()
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: UpstreamError) -> None:
        if self.exc is None:
            self.exc = exc
        self.abort()
        self._wake()

    def abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if not self.busy or self.done:  # bytes nobody asked for: never trust this connection
            self.keep_alive = False
            if not self.busy:
                self.abort()
            return
        try:
            self.parser.feed_data(data)
        except _PARSER_ERRORS as exc:
            if not self.done:
                self._fail(UpstreamProtocolError(f"invalid upstream response: {exc!r}"))
            self.keep_alive = False  # after HEAD, or more bytes after a complete response

    def eof_received(self) -> None:
        return None  # let the transport close; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        if self.busy and not self.done and self.exc is None:
            if exc is None and self.headers_done and self._until_eof():
                self.done = True  # a close-delimited body ends here
            elif isinstance(exc, ssl.SSLError) and not self.got_bytes and not self.reused:
                # A TLS 1.3 server refuses our certificate (or its absence) after our side of
                # the handshake is done: its alert arrives here, in place of the first answer.
                self.exc = UpstreamConnectError(f"TLS handshake failed: {exc}")
            else:
                why = f": {exc!r}" if exc is not None else ""
                self.exc = UpstreamResetError(f"upstream closed the connection{why}")
        self._wake()
        self.on_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def _until_eof(self) -> bool:
        headers = self.headers
        if "content-length" in headers:
            return False
        te = headers.get("transfer-encoding")
        return te is None or "chunked" not in te.lower()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        if self.done:
            raise UpstreamProtocolError("a second response")  # stops the parser
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Decoded as aiohttp does, so that any bytes round-trip through its server.
        self.raw_headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:  # interim (100, 103...): skip it; 101 fails later as an upgrade
            self.raw_headers.clear()
            return
        self.status = status
        self.headers = CIMultiDict(self.raw_headers)
        self.raw_headers.clear()
        self.keep_alive = parser.should_keep_alive()
        self.headers_done = True
        self._wake()
        if self.head:
            self.done = True
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        if self.waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if self.headers_done:  # not the end of an interim response
            self.done = True
            self._wake()
