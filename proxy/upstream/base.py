"""The narrow interface between `forward` and an upstream HTTP client.

Two implementations sit behind it: `aiohttp_client` (aiohttp's ClientSession) and `lean`
(our own keep-alive pool on asyncio Protocols + httptools). `upstream.client` in the config
picks one; both must pass the same integration suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from multidict import CIMultiDict


class UpstreamError(Exception):
    """The upstream call failed; `kind` is one of contracts.UPSTREAM_ERRORS."""

    kind = "protocol"


class UpstreamConnectError(UpstreamError):
    """Could not connect (refused, unreachable, DNS, TLS handshake, connect timeout)."""

    kind = "connect"


class UpstreamTimeoutError(UpstreamError):
    """Connected, but the upstream did not answer (or stalled mid-body) in time."""

    kind = "timeout"


class UpstreamAbandoned(UpstreamTimeoutError):
    """The caller stopped waiting at its deadline (`UpstreamRequest.timeout`), but the exchange
    goes on: the backend does not know the caller left and still works on the request, so the
    connection is kept and `late` reads its answer (within `UpstreamRequest.linger`)."""

    def __init__(self, message: str, late: LateAnswer) -> None:
        super().__init__(message)
        self.late = late


class UpstreamResetError(UpstreamError):
    """The connection was closed or reset before the response was complete."""

    kind = "reset"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that is not valid HTTP/1.1."""

    kind = "protocol"


@dataclass(slots=True)
class UpstreamRequest:
    """A request ready for the upstream: hop-by-hop headers already stripped."""

    method: str
    target: str  # origin-form path and query, exactly as received
    headers: CIMultiDict[str]  # includes Host and Content-Length when the client sent one
    body: AsyncIterator[bytes] | None  # None: no body at all
    timeout: float  # seconds allowed for the response headers (and for each body chunk)
    # Seconds past `timeout` the backend's answer is still awaited in the background when the
    # caller gives up at `timeout` (UpstreamAbandoned); 0: the exchange is cut at `timeout`.
    linger: float = 0.0
    # Called (lean client) when the caller is cancelled (its client left) while awaiting the
    # headers of a request sent whole: the exchange goes on as the LateAnswer given, within
    # `timeout` + `linger`; None: the exchange is cut with its caller.
    on_cancel: Callable[[LateAnswer], None] | None = None


class LateAnswer(Protocol):
    """An exchange its caller gave up on (`UpstreamAbandoned`) that goes on in the background.
    Call `status`, then `finish`; or `close` to cut it."""

    async def status(self) -> int:
        """The answer's status once its headers arrive (within the request's `linger`).
        Raises UpstreamError (the connection is then closed)."""
        ...

    async def finish(self) -> None:
        """Read the rest of the answer and discard it; the connection goes back to the pool
        (closed if the answer fails). Raises nothing but cancellation."""
        ...

    def close(self) -> None:
        """Cut the exchange (close its connection) unless it has finished."""
        ...


class UpstreamResponse(Protocol):
    """Response headers have arrived; the body is read in chunks with back-pressure."""

    status: int
    reason: str
    headers: CIMultiDict[str]  # as received; forward strips hop-by-hop ones

    async def read_chunk(self) -> bytes:
        """The next body chunk; b"" at the end. Raises UpstreamError on failure."""
        ...

    def release(self) -> None:
        """Give the connection back to the pool (or close it if the body was not finished)."""
        ...


async def discard(resp: UpstreamResponse) -> None:
    """Read `resp`'s body to its end and drop it (a late answer nobody waits for); an
    upstream failure cuts it short. Released either way: at the end its connection is
    reusable, cut short it is closed."""
    try:
        while await resp.read_chunk():
            pass
    except UpstreamError:
        pass
    finally:
        resp.release()


class UpstreamClient(Protocol):
    """One per process; pooled keep-alive connections to the single configured upstream."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request, return once response headers are in. Raises UpstreamError."""
        ...

    async def close(self) -> None:
        """Close every pooled connection."""
        ...

    def stats(self) -> dict[str, Any]:
        """Pool figures for /status (open, idle, waiting)."""
        ...
