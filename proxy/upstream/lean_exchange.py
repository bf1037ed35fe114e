"""One exchange of the lean pool once its response headers are in (`LeanResponse`), or once
its caller gave up on it while the backend still works (`LeanLate`): the body read from the
connection's bounded buffer, and the connection given back to the pool at the end."""

from __future__ import annotations

from typing import Protocol

from multidict import CIMultiDict

from .base import UpstreamResetError, discard
from .connection import Connection

HEADERS_TIMEOUT = "upstream did not answer in time"
STALL_TIMEOUT = "upstream stalled mid-body"


class ConnectionPool(Protocol):
    """Where an exchange's connection goes back (`lean.LeanUpstream`)."""

    def give_back(self, conn: Connection) -> None:
        """Reuse `conn` if its exchange was read to its end, else close it."""


class LeanResponse:
    """Response headers are in; the body streams from the connection's bounded buffer."""

    __slots__ = ("_conn", "_pool", "_timeout", "headers", "reason", "status")

    def __init__(self, pool: ConnectionPool, conn: Connection, timeout: float) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self._timeout = timeout
        self.status: int = conn.status
        self.reason: str = conn.reason
        self.headers: CIMultiDict[str] = conn.headers

    async def read_chunk(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        while True:
            chunks = conn.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                conn.buffered = 0
                if conn.read_paused:
                    conn.read_paused = False
                    conn.transport.resume_reading()
                return data
            if conn.done:
                self.release()
                return b""
            if conn.exc is not None:
                raise conn.exc
            await conn.wait(conn.loop.time() + self._timeout, STALL_TIMEOUT)

    def release(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._pool.give_back(conn)


class LeanLate:
    """An exchange given up at its caller's deadline, still open: the backend's answer is read
    (until `when`, the upstream's own timeout) and discarded, and the connection reused."""

    __slots__ = ("_conn", "_pool", "_stall", "_when")

    def __init__(self, pool: ConnectionPool, conn: Connection, when: float, stall: float) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self._when = when
        self._stall = stall

    async def status(self) -> int:
        conn = self._conn
        if conn is None:
            raise UpstreamResetError("the late exchange was closed")
        try:
            while not conn.headers_done:
                if conn.exc is not None:
                    raise conn.exc
                await conn.wait(self._when, HEADERS_TIMEOUT)
        except BaseException:
            self.close()
            raise
        return conn.status

    async def finish(self) -> None:
        conn = self._conn
        if conn is None or not conn.headers_done:
            self.close()
            return
        self._conn = None
        await discard(LeanResponse(self._pool, conn, self._stall))

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._pool.give_back(conn)  # not done: closed, its slot freed when lost
