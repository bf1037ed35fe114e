"""A lean HTTP/1.1 keep-alive client for the load generator (asyncio Protocols + httptools).

aiohttp's client costs several times more CPU per request than the server it measures; on a
2-core machine that would make the generator the bottleneck. This client does only what the
fleet needs: GET with headers, a per-attempt timeout that aborts the connection (as a real
client does, so the server sees the disconnect), keep-alive reuse, and a few response headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import httptools


class ConnectError(Exception):
    """The connection could not be made, or broke before a response arrived."""


@dataclass(slots=True)
class Response:
    """A complete response: status, lower-cased headers, body size (and body if kept)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body_len: int = 0
    body: bytes = b""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight (no pipelining)."""

    __slots__ = (
        "_body",
        "_body_len",
        "_headers",
        "_keep_body",
        "_parser",
        "_pool",
        "_status",
        "closed",
        "future",
        "reused",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.future: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._status = 0
        self._body_len = 0
        self._body: list[bytes] = []
        self._keep_body = False
        self.closed = False
        self.reused = False

    # asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectError(f"bad response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        self._fail(ConnectError(f"connection lost: {exc or 'closed by peer'}"))

    # httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = {}
        self._body_len = 0
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._keep_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        resp = Response(self._status, self._headers, self._body_len, b"".join(self._body))
        keep = self._parser.should_keep_alive()
        fut, self.future = self.future, None
        if fut is not None and not fut.done():
            fut.set_result(resp)
        if keep and not self.closed:
            self._pool.put_idle(self)
        else:
            self.abort()

    # helpers ---------------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        fut, self.future = self.future, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def send(self, data: bytes, keep_body: bool) -> asyncio.Future[Response]:
        """Write one request; the future resolves with its response."""
        assert self.transport is not None
        self._keep_body = keep_body
        self.future = self._pool.loop.create_future()
        self.transport.write(data)
        return self.future

    def abort(self) -> None:
        """Close now without waiting (what a client does when it gives up)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections to one host:port, opened on demand, never limited in number."""

    def __init__(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None = None,
        source: str | None = None,
    ):
        self.host = host
        self.port = port
        self.loop = loop or asyncio.get_running_loop()
        # The local address connections are made from (a loopback 127.x.y.z per client
        # machine: a proxy tells clients apart by address, as it does pods).
        self._local = None if source is None else (source, 0)
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._host_header = f"Host: {host}:{port}\r\n".encode("latin-1")
        self.opened = 0

    def put_idle(self, conn: _Conn) -> None:
        """Return a connection after a complete response."""
        conn.reused = True
        self._idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        """Drop a closed connection from the pool's books (idle ones are skipped when popped)."""
        self._all.discard(conn)

    async def _connect(self) -> _Conn:
        try:
            _, proto = await self.loop.create_connection(
                lambda: _Conn(self), self.host, self.port, local_addr=self._local
            )
        except OSError as exc:
            raise ConnectError(f"connect {self.host}:{self.port}: {exc}") from None
        self.opened += 1
        self._all.add(proto)
        return proto

    async def prewarm(self, n: int) -> None:
        """Open `n` idle connections ahead of a burst (so the burst is writes, not SYNs)."""
        conns = await asyncio.gather(*(self._connect() for _ in range(n)), return_exceptions=True)
        for conn in conns:
            if isinstance(conn, _Conn):
                self._idle.append(conn)

    async def connect(self) -> _Conn:
        """A new connection held by the caller (not in the idle pool) for `send_now`."""
        return await self._connect()

    def send_now(self, conn: _Conn, data: bytes) -> asyncio.Future[Response] | None:
        """Write an encoded request on `conn` at once (no await); None if it cannot be used.

        For bursts: many requests prepared ahead are written in one tight loop, so they leave
        within a few milliseconds instead of one event-loop step each.
        """
        if conn.closed or conn.future is not None or conn.transport is None:
            return None
        return conn.send(data, keep_body=False)

    async def finish(
        self, conn: _Conn, future: asyncio.Future[Response], timeout: float | None
    ) -> Response:
        """Wait for the response to a `send_now`; abort the connection on timeout or error."""
        try:
            async with asyncio.timeout(timeout):
                return await future
        except BaseException:
            if conn.future is not None:
                conn.abort()
            raise

    def encode(self, method: str, path: str, headers: Iterable[tuple[str, str]]) -> bytes:
        """The request's bytes (HTTP/1.1, Host added)."""
        lines = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        lines.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
        lines.append(b"\r\n")
        return b"".join(lines)

    async def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        timeout: float | None = None,
        keep_body: bool = False,
    ) -> Response:
        """Send one request; raise TimeoutError after `timeout` s, ConnectError on I/O failure.

        On timeout the connection is aborted, never reused: the server sees the client leave.
        A reused idle connection that turns out closed is retried once on a fresh one (as any
        pooling client does), so stale keep-alive never shows up as a connection error.
        """
        data = self.encode(method, path, headers)
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(timeout):
                for _ in range(2):
                    conn = None
                    while self._idle:
                        cand = self._idle.pop()
                        if not cand.closed:
                            conn = cand
                            break
                    stale_ok = conn is not None
                    if conn is None:
                        conn = await self._connect()
                    try:
                        return await conn.send(data, keep_body)
                    except ConnectError:
                        if not stale_ok:
                            raise
                raise ConnectError("reused connections kept failing")
        except BaseException:
            # Timeout, cancellation or I/O error: this connection's state is unknown; drop it.
            if conn is not None and conn.future is not None:
                conn.abort()
            raise

    def close(self) -> None:
        """Abort every connection."""
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        self._all.clear()

    @property
    def open_connections(self) -> int:
        """Connections currently open (idle or busy)."""
        return len(self._all)
