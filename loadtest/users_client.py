"""`self.client` of a user (loadtest.users): requests over the lean keep-alive pool, prepared
bursts, each result fired as Locust's `request` event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .httpclient import ConnectError, Pool, Response

if TYPE_CHECKING:
    from .users_runner import Environment


@dataclass(slots=True)
class Result:
    """One request's result: the response, or the error kind ("timeout" / "connection")."""

    response: Response | None
    error: str | None
    started: float
    finished: float

    @property
    def status(self) -> int:
        """HTTP status, 0 when there was no response."""
        return self.response.status if self.response is not None else 0

    @property
    def ok(self) -> bool:
        """A 2xx/3xx response."""
        return self.response is not None and 200 <= self.response.status < 400


RequestListener = Callable[..., None]


class EventHook:
    """A list of listeners fired with keyword arguments (Locust's `events.request` shape)."""

    def __init__(self) -> None:
        self._listeners: list[RequestListener] = []

    def add_listener(self, fn: RequestListener) -> RequestListener:
        """Register `fn`; returns it so this works as a decorator."""
        self._listeners.append(fn)
        return fn

    def fire(self, **kwargs: Any) -> None:
        """Call every listener."""
        for fn in self._listeners:
            fn(**kwargs)


@dataclass
class Events:
    """The events a run fires."""

    request: EventHook = field(default_factory=EventHook)


def failure_text(result: Result) -> str | None:
    """The failure as Locust's failures CSV would name it, or None for a success."""
    if result.error == "timeout":
        return "TimeoutError('per-attempt timeout')"
    if result.error is not None:
        return "ConnectError('connection failed')"
    resp = result.response
    assert resp is not None
    if resp.status >= 400:
        reason = resp.headers.get("x-sluice-reason") or resp.headers.get("x-backend-reason")
        return f"HTTPError('{resp.status}{' ' + reason if reason else ''}')"
    return None


@dataclass(slots=True)
class Prepared:
    """A request encoded ahead of time on a connection of its own (see HttpClient.prepare)."""

    pool: Pool
    method: str
    path: str
    data: bytes
    conn: Any = None
    future: asyncio.Future[Response] | None = None
    started: float = 0.0


class HttpClient:
    """`self.client` of a user: GET/POST over the lean keep-alive pool, firing `request` events."""

    def __init__(self, environment: Environment, base_url: str | None) -> None:
        self.environment = environment
        self.base_url = base_url

    def _pool(self, base_url: str | None, source: str | None = None) -> Pool:
        url = base_url or self.base_url
        if not url:
            raise ValueError("no host: set User.host or Environment(host=...)")
        return self.environment.pool(url, source)

    def release_source(self, source: str) -> None:
        """Close the connections made from `source` (a client machine that is done)."""
        self.environment.drop_pools(source)

    async def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        base_url: str | None = None,
        context: Any = None,
        source: str | None = None,
    ) -> Result:
        """Send one request; never raises for HTTP errors, timeouts or connection errors.
        `source`: the local address to connect from (None: the system's choice)."""
        pool = self._pool(base_url, source)
        started = time.monotonic()
        response: Response | None = None
        error: str | None = None
        try:
            response = await pool.request(method, path, headers, timeout)
        except TimeoutError:
            error = "timeout"
        except ConnectError:
            error = "connection"
        return self._record(method, path, name, started, response, error, context)

    async def get(self, path: str, **kwargs: Any) -> Result:
        """GET `path` (see `request`)."""
        return await self.request("GET", path, **kwargs)

    # Bursts: prepare (encode + connect) ahead, `fire` many in one loop, then `complete` each.
    async def prepare(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        base_url: str | None = None,
        source: str | None = None,
    ) -> Prepared:
        """Encode a request and open a connection for it, to be sent later by `fire`."""
        pool = self._pool(base_url, source)
        prepared = Prepared(pool, method, path, pool.encode(method, path, headers))
        try:
            prepared.conn = await pool.connect()
        except ConnectError:
            prepared.conn = None
        return prepared

    @staticmethod
    def fire(prepared: Prepared) -> bool:
        """Write a prepared request now, synchronously; False if its connection is unusable."""
        if prepared.conn is None:
            return False
        prepared.started = time.monotonic()
        prepared.future = prepared.pool.send_now(prepared.conn, prepared.data)
        return prepared.future is not None

    async def complete(
        self,
        prepared: Prepared,
        *,
        name: str | None = None,
        timeout: float | None = None,
        context: Any = None,
    ) -> Result:
        """Await a fired request's response (timeout counted from its send), firing events."""
        assert prepared.future is not None, "fire() it first"
        response: Response | None = None
        error: str | None = None
        left = None if timeout is None else timeout - (time.monotonic() - prepared.started)
        try:
            response = await prepared.pool.finish(prepared.conn, prepared.future, left)
        except TimeoutError:
            error = "timeout"
        except ConnectError:
            error = "connection"
        return self._record(
            prepared.method, prepared.path, name, prepared.started, response, error, context
        )

    def _record(
        self,
        method: str,
        path: str,
        name: str | None,
        started: float,
        response: Response | None,
        error: str | None,
        context: Any,
    ) -> Result:
        result = Result(response, error, started, time.monotonic())
        self.environment.events.request.fire(
            request_type=method,
            name=name or path.split("?", 1)[0],
            response_time=(result.finished - started) * 1000.0,
            response_length=response.body_len if response is not None else 0,
            result=result,
            exception=failure_text(result),
            context=context,
        )
        return result
