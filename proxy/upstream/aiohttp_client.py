"""The upstream client on aiohttp's ClientSession (the default until `lean` passes everything)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..config import UpstreamConfig
from .base import (
    UpstreamAbandoned,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResetError,
    UpstreamTimeoutError,
    discard,
)
from .tls import UpstreamTls

_CHUNK = 64 * 1024


class AiohttpResponse:
    """Wraps aiohttp's ClientResponse in the UpstreamResponse interface."""

    __slots__ = ("_resp", "_timeout", "headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse, timeout: float) -> None:
        self._resp = resp
        self._timeout = timeout
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers: CIMultiDict[str] = CIMultiDict(resp.headers)

    async def read_chunk(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._resp.content.readany()
        except TimeoutError:
            raise UpstreamTimeoutError("upstream stalled mid-body") from None
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamResetError(f"upstream body broken: {exc}") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamResetError(f"upstream connection lost: {exc}") from None

    def release(self) -> None:
        self._resp.release()


class AiohttpLate:
    """An exchange given up at its caller's deadline, still running as its own task (with the
    upstream's own read timeout): its answer is read and discarded."""

    __slots__ = ("_resp", "_task")

    def __init__(self, task: asyncio.Task[AiohttpResponse]) -> None:
        self._task = task
        self._resp: AiohttpResponse | None = None

    async def status(self) -> int:
        try:
            self._resp = await self._task
        except BaseException:
            self.close()
            raise
        return self._resp.status

    async def finish(self) -> None:
        resp = self._resp
        if resp is None:
            self.close()
            return
        await discard(resp)

    def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
        elif self._resp is not None:
            self._resp._resp.close()  # not read to its end: never reuse the connection


class AiohttpUpstream:
    """Pooled keep-alive connections through one shared ClientSession."""

    def __init__(self, config: UpstreamConfig, tls: UpstreamTls | None) -> None:
        parts = urlsplit(config.url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = config.connect_timeout
        # The name TLS checks: the url's host unless upstream.tls.server_name overrides it.
        self._server_hostname = tls.server_hostname if tls is not None else None
        self._connector = aiohttp.TCPConnector(
            limit=config.pool_size,
            keepalive_timeout=config.pool_idle_timeout,
            ttl_dns_cache=60,
            ssl=tls.context if tls is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        if request.linger <= 0 or request.body is not None:
            # (A body may still be streaming from our client: the exchange is cut with it.)
            return await self._send(request, request.timeout)
        # Its own task, so that giving up at the caller's deadline does not cut it.
        task = asyncio.ensure_future(self._send(request, request.timeout + request.linger))
        try:
            done, _ = await asyncio.wait((task,), timeout=request.timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done:
            return task.result()
        raise UpstreamAbandoned("upstream did not answer in time", AiohttpLate(task))

    async def _send(self, request: UpstreamRequest, read_timeout: float) -> AiohttpResponse:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=self.connect_timeout,
            sock_read=read_timeout,
        )
        try:
            resp = await self._session.request(
                request.method,
                # encoded=True: yarl must not re-quote the target (%7E would become ~).
                URL(self.base + self.prefix + request.target, encoded=True),
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                timeout=timeout,
                compress=None,
                skip_auto_headers=None,
                server_hostname=self._server_hostname,
            )
        except aiohttp.ServerTimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise UpstreamConnectError(f"connect timeout: {exc}") from None
            raise UpstreamTimeoutError(f"upstream read timeout: {exc}") from None
        except aiohttp.ClientSSLError as exc:
            raise UpstreamConnectError(f"TLS handshake failed: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(str(exc)) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise UpstreamResetError(f"upstream closed the connection: {exc}") from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamProtocolError(f"invalid upstream response: {exc}") from None
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamResetError(str(exc)) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            if isinstance(exc.__cause__, ssl.SSLError):  # a TLS 1.3 alert after the handshake
                raise UpstreamConnectError(f"TLS handshake failed: {exc}") from None
            raise UpstreamResetError(str(exc)) from None
        except TimeoutError:
            raise UpstreamTimeoutError("upstream did not answer in time") from None
        except UpstreamError:
            raise
        if resp.status == 101:  # aiohttp hands an upgrade back as if it were the final answer
            resp.close()  # the connection now speaks another protocol: never reuse it
            raise UpstreamProtocolError(
                "upstream switched protocols (101): upgrades are not forwarded"
            )
        return AiohttpResponse(resp, read_timeout)

    async def close(self) -> None:
        await self._session.close()

    def stats(self) -> dict[str, Any]:
        return {"client": "aiohttp", "pool_size": self._connector.limit}
