"""The lean upstream client: a keep-alive pool of asyncio Protocols with httptools parsing.

It exists because aiohttp's client costs ~58 µs of CPU per request here (issue 7); this one
does the same job for a fraction of that (loadtest/bench_upstream.py). The pool:
- at most `pool_size` connections (connecting ones included); beyond that, a FIFO queue of
  waiters, each handed a connection (or a free slot) directly, cancellation-safe;
- idle connections are reused most-recent first and closed after `pool_idle_timeout` by one
  timer aimed at the oldest;
- a reused connection that dies before any response byte is retried once, on a fresh
  connection, for idempotent methods whose body was not touched.
Timeouts are `call_at` handles cancelled on completion, never a per-request `wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from ..config import UpstreamConfig
from .base import (
    UpstreamAbandoned,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResetError,
    UpstreamTimeoutError,
)
from .connection import Connection
from .lean_exchange import HEADERS_TIMEOUT, LeanLate, LeanResponse
from .tls import UpstreamTls

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_EMPTY_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # send Content-Length: 0
_CHUNKED = -1  # body framing: chunked transfer coding
_NO_BODY = -2
_WRITE_TIMEOUT = "upstream stopped reading the request body"
_OUR_FRAMING = ("expect", "transfer-encoding")  # we frame the body; 100-continue is not waited


class LeanUpstream:
    """Pooled keep-alive connections to the one configured upstream."""

    def __init__(self, config: UpstreamConfig, tls: UpstreamTls | None) -> None:
        parts = urlsplit(config.url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if tls is not None else 80)
        self._ssl = tls.context if tls is not None else None
        self._server_hostname = tls.server_hostname if tls is not None else None
        self._prefix = parts.path.rstrip("/")
        self._host_line = f"Host: {parts.netloc.rpartition('@')[2]}\r\n"
        self._connect_timeout = config.connect_timeout
        self._size = config.pool_size
        self._idle_timeout = config.pool_idle_timeout
        self._loop = asyncio.get_running_loop()
        self._idle: deque[Connection] = deque()  # oldest left, most recently used right
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._conns: set[Connection] = set()
        self._open = 0  # slots taken: connections open or being opened
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._all_lost: asyncio.Future[None] | None = None
        self.stale_retries = 0

    # -- the request ---------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> LeanResponse:
        if self._closed:
            raise UpstreamConnectError("upstream client is closed")
        head, length = self._head(request)
        conn = await self._acquire(fresh=False)
        try:
            return await self._exchange(conn, request, head, length)
        except UpstreamAbandoned:
            raise  # the connection goes on with the late answer
        except asyncio.CancelledError:
            if not conn.abandoned:
                conn.abort()
            raise
        except UpstreamResetError:
            conn.abort()
            if conn.got_bytes or conn.body_started or not conn.reused:
                raise
            if request.method not in IDEMPOTENT:
                raise
        except BaseException:
            conn.abort()
            raise
        # The upstream closed this idle connection as we reused it: once more, on a new one.
        self.stale_retries += 1
        conn = await self._acquire(fresh=True)
        try:
            return await self._exchange(conn, request, head, length)
        except UpstreamAbandoned:
            raise
        except BaseException:
            if conn.abandoned:
                raise
            conn.abort()
            raise

    def _head(self, request: UpstreamRequest) -> tuple[bytes, int]:
        """The request line and headers, encoded once (a retry reuses them); body framing."""
        headers = request.headers
        lines = [f"{request.method} {self._prefix}{request.target} HTTP/1.1\r\n"]
        if "host" not in headers:
            lines.append(self._host_line)
        items: Any = headers.items()
        if "expect" in headers or "transfer-encoding" in headers:
            items = [(k, v) for k, v in items if k.lower() not in _OUR_FRAMING]
        lines += [f"{k}: {v}\r\n" for k, v in items]
        cl = headers.get("content-length")
        if request.body is None:
            length = _NO_BODY
            if cl is None and request.method in _EMPTY_BODY_METHODS:
                lines.append("Content-Length: 0\r\n")
        elif cl is None:
            length = _CHUNKED
            lines.append("Transfer-Encoding: chunked\r\n")
        elif cl.isdigit():
            length = int(cl)
        else:
            raise UpstreamProtocolError(f"invalid request Content-Length {cl!r}")
        lines.append("\r\n")
        text = "".join(lines)
        # Every line ends in CRLF and no name or value smuggles another one in.
        if text.count("\n") != len(lines) or text.count("\r") != len(lines):
            raise UpstreamProtocolError("CR or LF inside a request header")
        return text.encode("utf-8", "surrogateescape"), length

    async def _exchange(
        self, conn: Connection, request: UpstreamRequest, head: bytes, length: int
    ) -> LeanResponse:
        conn.begin(request.method == "HEAD")
        if request.body is None:
            conn.transport.write(head)
            conn.req_done = True
        else:
            await self._send_body(conn, head, request.body, length, request.timeout)
        if not conn.headers_done:
            when = self._loop.time() + request.timeout
            while not conn.headers_done:
                if conn.exc is not None:
                    raise conn.exc
                try:
                    await conn.wait(when, HEADERS_TIMEOUT)
                except UpstreamTimeoutError:
                    if request.linger <= 0 or not conn.req_done or conn.exc is not None:
                        raise
                    # The backend still works on it: keep the connection, read the answer.
                    stall = request.timeout + request.linger
                    late = LeanLate(self, conn, when + request.linger, stall)
                    raise UpstreamAbandoned(HEADERS_TIMEOUT, late) from None
                except asyncio.CancelledError:
                    on_cancel = request.on_cancel
                    if on_cancel is not None and conn.req_done and conn.exc is None:
                        # Its client left, but the backend still works on it, as above.
                        conn.abandoned = True
                        stall = request.timeout + request.linger
                        on_cancel(LeanLate(self, conn, when + request.linger, stall))
                    raise
        return LeanResponse(self, conn, request.timeout)

    async def _send_body(
        self, conn: Connection, head: bytes, body: AsyncIterator[bytes], length: int, stall: float
    ) -> None:
        transport = conn.transport
        pending: bytes | None = head  # sent with the first chunk: one write, not two
        sent = 0
        async for chunk in body:
            conn.body_started = True
            if conn.headers_done or conn.exc is not None:
                break  # answered early (the rest is not wanted) or gone
            if not chunk:
                continue
            sent += len(chunk)
            if length == _CHUNKED:
                chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
            elif sent > length:
                raise UpstreamProtocolError("request body longer than its Content-Length")
            if pending is not None:
                chunk = pending + chunk
                pending = None
            transport.write(chunk)
            if conn.write_paused:
                await self._drain(conn, stall)
        else:
            if length != _CHUNKED and sent != length:
                raise UpstreamProtocolError("request body shorter than its Content-Length")
            end = b"0\r\n\r\n" if length == _CHUNKED else b""
            transport.write(end if pending is None else pending + end)
            conn.req_done = True
            return
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
        if conn.exc is not None and not conn.headers_done:
            raise conn.exc

    async def _drain(self, conn: Connection, stall: float) -> None:
        when = self._loop.time() + stall
        while conn.write_paused and not conn.headers_done:
            if conn.exc is not None:
                raise conn.exc
            await conn.wait(when, _WRITE_TIMEOUT)

    # -- the pool ------------------------------------------------------------------------------

    async def _acquire(self, fresh: bool) -> Connection:
        while True:
            idle = self._idle
            while idle:
                conn = idle.pop()
                conn.idle = False
                if conn.transport.is_closing():
                    continue  # its connection_lost frees its slot
                if not fresh:
                    return conn
                conn.owns_slot = False  # take its slot for a new connection
                conn.abort()
                return await self._connect()
            if self._open < self._size:
                self._open += 1
                return await self._connect()
            fut: asyncio.Future[Connection | None] = self._loop.create_future()
            self._waiters.append(fut)
            try:
                got = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._hand_on(fut.result())  # handed over as we were cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
                raise
            if got is None:  # a free slot
                return await self._connect()
            if not got.transport.is_closing():
                return got

    async def _connect(self) -> Connection:
        """Open a connection in the slot the caller holds (freed again on failure)."""
        loop = self._loop
        conn = Connection(loop, self._lost)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except BaseException as exc:
            self._hand_on(None)
            if isinstance(exc, TimeoutError):
                raise UpstreamConnectError("connect timeout") from None
            if isinstance(exc, ssl.SSLError):
                raise UpstreamConnectError(f"TLS handshake failed: {exc}") from None
            if isinstance(exc, OSError):  # a reset mid-handshake has no message: name its type
                why = str(exc) or repr(exc)
                raise UpstreamConnectError(f"cannot connect to the upstream: {why}") from None
            raise
        conn.owns_slot = True
        self._conns.add(conn)
        if self._closed:
            conn.abort()
            raise UpstreamConnectError("upstream client is closed")
        return conn

    def _hand_on(self, conn: Connection | None) -> None:
        """A reusable connection (or, for None, a free slot) goes to the first waiter."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        if conn is None:
            self._open -= 1
            return
        conn.idle = True
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(conn.idle_since + self._idle_timeout, self._sweep)

    def give_back(self, conn: Connection) -> None:
        """A finished exchange's connection: reused if read to its end and reusable, else
        closed (its slot freed when it is lost)."""
        conn.busy = False
        if (
            conn.done
            and conn.keep_alive
            and conn.req_done
            and conn.exc is None
            and not self._closed
            and not conn.transport.is_closing()
        ):
            if conn.chunks:
                conn.chunks.clear()
                conn.buffered = 0
            if conn.read_paused:
                conn.read_paused = False
                conn.transport.resume_reading()
            conn.reused = True
            self._hand_on(conn)
        else:
            conn.abort()  # response not (fully) read, or not reusable: never hand it on

    def _lost(self, conn: Connection) -> None:
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
        if conn.owns_slot:
            conn.owns_slot = False
            self._hand_on(None)
        if self._all_lost is not None and not self._conns and not self._all_lost.done():
            self._all_lost.set_result(None)

    def _sweep(self) -> None:
        """Close connections idle for pool_idle_timeout (before the backend closes them)."""
        self._sweeper = None
        idle = self._idle
        limit = self._loop.time() - self._idle_timeout + 0.001  # timers may fire a hair early
        while idle and idle[0].idle_since <= limit:
            conn = idle.popleft()
            conn.idle = False
            conn.transport.close()
        if idle:
            self._sweeper = self._loop.call_at(idle[0].idle_since + self._idle_timeout, self._sweep)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(UpstreamConnectError("upstream client is closed"))
        if self._conns:
            self._all_lost = self._loop.create_future()
            for conn in list(self._conns):
                conn.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._all_lost

    def stats(self) -> dict[str, Any]:
        return {
            "client": "lean",
            "pool_size": self._size,
            "open": self._open,
            "idle": len(self._idle),
            "waiting": len(self._waiters),
            "stale_retries": self.stale_retries,
        }
