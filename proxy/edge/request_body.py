"""The client's request body on its way upstream: streamed, counted, timed, and its failures.

aiohttp's `client_max_size` does not see a streamed body, and its timeouts (and ours upstream)
only time the answer: the size limit and the stall timeout live here, and each failure is
Sluice's answer to give (400, 408, 413) once the upstream send stopped.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError


class RequestBodyError(Exception):
    """The client's request body failed; `status` is Sluice's answer (`bad-request`)."""

    status = 400  # malformed (a broken chunk, a connection that lost its framing)


class RequestBodyTooLarge(RequestBodyError):
    """The streamed request body passed `listen.max_body_size`."""

    status = 413


class RequestBodyStalled(RequestBodyError):
    """No request-body bytes for the upstream read timeout: the client holds a slot idle."""

    status = 408


class BrokenRequestBody(RequestPayloadError):
    """Set on a request body that will never be read to its end (it stalled, or its framing
    broke), so aiohttp does not linger reading it after the answer but closes at once."""


class BodyStream:
    """The client's request body as an async iterator, counted as it passes.

    aiohttp's `client_max_size` does not see a streamed body, so the limit is enforced here.
    A client that stops sending for `gap` seconds, or whose body breaks its framing, would
    otherwise hold an upstream slot for as long as it likes (aiohttp's and our upstream
    timeouts only time the answer). `failed` tells the caller why the upstream send failed.
    """

    __slots__ = ("_content", "failed", "gap", "limit", "total")

    def __init__(self, request: web.BaseRequest, limit: int, gap: float) -> None:
        self._content = request.content
        self.limit = limit
        self.gap = gap
        self.total = 0
        self.failed: RequestBodyError | None = None

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        content = self._content
        try:
            chunk = content.read_nowait()  # what has arrived already: no timer needed
            if not chunk and not content.is_eof():
                async with asyncio.timeout(self.gap):
                    chunk = await content.readany()
        except TimeoutError:
            self.failed = RequestBodyStalled(f"no request body bytes for {self.gap:g}s")
            content.set_exception(BrokenRequestBody(str(self.failed)))
            raise self.failed from None
        except RequestPayloadError as exc:
            self.failed = RequestBodyError(f"malformed request body: {exc}")
            raise self.failed from None
        if not chunk:
            raise StopAsyncIteration
        self.total += len(chunk)
        if self.limit and self.total > self.limit:
            self.failed = RequestBodyTooLarge(f"request body over {self.limit} bytes")
            raise self.failed
        return chunk
