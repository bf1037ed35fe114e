"""Both upstream clients (aiohttp's ClientSession and the lean pool) against real servers on
127.0.0.1: an aiohttp app for ordinary HTTP, raw asyncio socket servers for edge cases.

Every test runs on both clients (`kind`); where the aiohttp client genuinely cannot pass an
edge case, its parametrization is a strict xfail with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.config import UpstreamConfig
from proxy.upstream import (
    UpstreamAbandoned,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResetError,
    UpstreamResponse,
    UpstreamTimeoutError,
    make_upstream,
)

MB = 1024 * 1024
BLOCK = bytes(range(256)) * 256  # 64 KiB


def aiohttp_fails(reason: str, raises: type[BaseException]) -> Any:
    """The aiohttp parametrization of a test it cannot pass: a strict xfail that only the known
    defect satisfies (it must fail with `raises`; any other failure fails the test)."""
    return pytest.param(
        "aiohttp", marks=pytest.mark.xfail(strict=True, reason=reason, raises=raises)
    )


@pytest.fixture(params=["aiohttp", "lean"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def upstream(kind: str, url: str, **options: Any) -> AsyncIterator[UpstreamClient]:
    config = UpstreamConfig(url=url, client=kind, **options)
    client = make_upstream(config)
    try:
        yield client
    finally:
        await client.close()


def req(
    method: str,
    target: str,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: AsyncIterator[bytes] | None = None,
    timeout: float = 5.0,
) -> UpstreamRequest:
    return UpstreamRequest(method, target, CIMultiDict(headers or {}), body, timeout)


async def read_all(resp: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await resp.read_chunk():
        parts.append(chunk)
    return b"".join(parts)


async def fetch(client: UpstreamClient, request: UpstreamRequest) -> tuple[UpstreamResponse, bytes]:
    resp = await client.send(request)
    try:
        return resp, await read_all(resp)
    finally:
        resp.release()


async def gen(total: int, produced: list[int] | None = None) -> AsyncIterator[bytes]:
    """`total` bytes in 64 KiB chunks (BLOCK repeated); counts what it produced."""
    sent = 0
    while sent < total:
        part = BLOCK[: min(len(BLOCK), total - sent)]
        sent += len(part)
        if produced is not None:
            produced[0] = sent
        yield part


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def expected_sha(total: int) -> str:
    digest = hashlib.sha256()
    for _ in range(total // len(BLOCK)):
        digest.update(BLOCK)
    digest.update(BLOCK[: total % len(BLOCK)])
    return digest.hexdigest()


# -- servers -----------------------------------------------------------------------------------


class AppBackend:
    """An aiohttp app; `peers` records the client port of every request (one per connection)."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.state: dict[str, Any] = {}
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/echo{tail:.*}", self.echo)
        app.router.add_route("*", "/sha", self.sha)
        app.router.add_get("/big/{n}", self.big)
        app.router.add_get("/sized/{n}", self.sized)
        app.router.add_get("/cookies", self.cookies)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/late", self.late)
        self.app = app
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> AppBackend:
        self.app.middlewares.append(self.record_peer)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @web.middleware
    async def record_peer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])
        return await handler(request)

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        doc = {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": list(request.headers.items()),
            "body": body.decode("latin-1"),
        }
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def sha(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("wait", "0")))
        self.state["produced_at_read"] = self.state.get("produced", [0])[0]
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def big(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        resp = web.StreamResponse()
        resp.content_length = n
        await resp.prepare(request)
        sent = 0
        while sent < n:
            part = BLOCK[: min(len(BLOCK), n - sent)]
            await resp.write(part)
            sent += len(part)
            self.state["written"] = sent
        await resp.write_eof()
        return resp

    async def late(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0")))
        return web.Response(body=b"late" * 1000)

    async def sized(self, request: web.Request) -> web.Response:
        return web.Response(body=b"s" * int(request.match_info["n"]))

    async def cookies(self, request: web.Request) -> web.Response:
        resp = web.Response(text="c")
        for value in ("a=1; Path=/", "b=2; HttpOnly", "a=3; Max-Age=0"):
            resp.headers.add("Set-Cookie", value)
        resp.headers.add("X-Dup", "one")
        resp.headers.add("X-Dup", "two")
        return resp

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"hello", b" ", b"chunked", b" world"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), headers={"ETag": '"v1"'})


Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A socket server running `handler(server, reader, writer, connection_index)`.

    Counts connections: accepted in total, open now, and the most open at once.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        index = self.accepted
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(self, reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.transport.abort()
            self.writers.discard(writer)
            self.tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        """One request (Content-Length bodies only); None at a clean EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        self.requests.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        return head, body


def ok(body: bytes = b"ok", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def serve_ok(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
) -> None:
    """Keep-alive: answer every request with 200 "ok"."""
    while await server.read_request(reader) is not None:
        writer.write(ok())


def raw(response: bytes, then: str = "keep") -> Handler:
    """Answer the first request on each connection with `response`, then keep it, close it,
    or answer later requests with 200 "ok"."""

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        if await server.read_request(reader) is None:
            return
        writer.write(response)
        await writer.drain()
        if then == "close":
            writer.close()
            return
        if then == "reset":
            writer.transport.abort()
            return
        await serve_ok(server, reader, writer, index)

    return handler


# -- ordinary requests ---------------------------------------------------------------------------

TARGETS = [
    "/echo",
    "/echo/a/b?x=1&y=two",
    "/echo/%E2%82%AC/%2F?q=a+b&r=%20&empty=&flag",
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_methods_targets_and_bodies_byte_exact(kind: str, method: str, target: str) -> None:
    payload = b"" if method in ("GET", "DELETE") else b'{"k": "v\\u00e9"}\x00\xff'
    headers = {"X-Custom": "v1", "Content-Length": str(len(payload))} if payload else {}
    async with AppBackend() as app, upstream(kind, app.url) as client:
        body = once(payload) if payload else None
        resp, data = await fetch(client, req(method, target, headers, body))
    assert resp.status == 200
    doc = orjson.loads(data)
    assert doc["method"] == method
    assert doc["path_qs"] == target
    assert doc["body"].encode("latin-1") == payload
    sent = CIMultiDict(doc["headers"])
    assert sent["Host"] == app.url.removeprefix("http://")
    if payload:
        assert sent["X-Custom"] == "v1"
        assert sent["Content-Length"] == str(len(payload))


@pytest.mark.parametrize("kind", ["aiohttp", "lean"])
async def test_target_sent_unnormalised(kind: str) -> None:
    target = "/echo/%7Euser/a%2fb/./c?q=%41&x=a%20b"
    async with AppBackend() as app, upstream(kind, app.url) as client:
        _, data = await fetch(client, req("GET", target))
    assert orjson.loads(data)["path_qs"] == target


async def test_url_prefix_host_header_and_duplicate_request_headers(kind: str) -> None:
    async with AppBackend() as app, upstream(kind, app.url + "/echo/base/") as client:
        headers = [("Host", "api.example"), ("X-Dup", "1"), ("X-Dup", "2")]
        _, data = await fetch(client, req("GET", "/x?y=1", headers))
    doc = orjson.loads(data)
    assert doc["path_qs"] == "/echo/base/x?y=1"
    sent = CIMultiDict(doc["headers"])
    assert sent["Host"] == "api.example"
    assert sent.getall("X-Dup") == ["1", "2"]


async def test_post_without_length_is_sent_chunked(kind: str) -> None:
    async with AppBackend() as app, upstream(kind, app.url) as client:
        body = gen(200_000)
        resp, data = await fetch(client, req("POST", "/sha", body=body))
    assert resp.status == 200
    assert orjson.loads(data) == {"sha256": expected_sha(200_000), "size": 200_000}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_upload_streams(kind: str, framing: str) -> None:
    total = 20 * MB
    headers = {"Content-Length": str(total)} if framing == "content-length" else {}
    async with AppBackend() as app, upstream(kind, app.url) as client:
        _, data = await fetch(client, req("PUT", "/sha", headers, gen(total), timeout=30))
    assert orjson.loads(data) == {"sha256": expected_sha(total), "size": total}


async def test_upload_back_pressure(kind: str) -> None:
    """The upstream does not read for a while: the body iterator is not drained meanwhile."""
    total = 50 * MB
    produced = [0]
    async with AppBackend() as app, upstream(kind, app.url) as client:
        app.state["produced"] = produced
        headers = {"Content-Length": str(total)}
        body = gen(total, produced)
        _, data = await fetch(client, req("POST", "/sha?wait=0.3", headers, body, timeout=30))
    assert orjson.loads(data)["size"] == total
    assert app.state["produced_at_read"] < 20 * MB


async def test_large_download_streams(kind: str) -> None:
    total = 20 * MB + 123
    async with AppBackend() as app, upstream(kind, app.url) as client:
        resp = await client.send(req("GET", f"/big/{total}", timeout=30))
        digest = hashlib.sha256()
        size = 0
        try:
            while chunk := await resp.read_chunk():
                digest.update(chunk)
                size += len(chunk)
        finally:
            resp.release()
    assert size == total
    assert digest.hexdigest() == expected_sha(total)


async def test_download_back_pressure(kind: str) -> None:
    """A reader that stops reading stops the upstream: no whole-body buffering."""
    total = 50 * MB
    async with AppBackend() as app, upstream(kind, app.url) as client:
        resp = await client.send(req("GET", f"/big/{total}", timeout=30))
        try:
            size = len(await resp.read_chunk())
            await asyncio.sleep(0.3)
            assert app.state["written"] < 20 * MB  # kernel buffers + the client's high-water
            while chunk := await resp.read_chunk():
                size += len(chunk)
        finally:
            resp.release()
    assert size == total


async def test_duplicate_response_headers_kept_in_order(kind: str) -> None:
    async with AppBackend() as app, upstream(kind, app.url) as client:
        resp, body = await fetch(client, req("GET", "/cookies"))
    assert body == b"c"
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly", "a=3; Max-Age=0"]
    assert resp.headers.getall("X-Dup") == ["one", "two"]


async def test_keep_alive_reuses_one_connection(kind: str) -> None:
    async with AppBackend() as app, upstream(kind, app.url) as client:
        for _ in range(5):
            resp, _ = await fetch(client, req("GET", "/echo"))
            assert resp.status == 200
        resp, _ = await fetch(client, req("POST", "/sha", {"Content-Length": "3"}, once(b"abc")))
        assert resp.status == 200
    assert len(app.peers) == 6
    assert len(set(app.peers)) == 1


# -- responses without a body, interim responses, framing -----------------------------------


async def test_head_has_no_body(kind: str) -> None:
    async with AppBackend() as app, upstream(kind, app.url) as client:
        for _ in range(2):
            resp, body = await fetch(client, req("HEAD", "/sized/1234"))
            assert (resp.status, body, resp.headers["Content-Length"]) == (200, b"", "1234")
            resp, body = await fetch(client, req("GET", "/chunked"))
            assert body == b"hello chunked world"


@pytest.mark.parametrize(
    "kind",
    [
        aiohttp_fails(
            "it reads the stray body as the next response, whose body then never ends",
            raises=UpstreamTimeoutError,
        ),
        "lean",
    ],
)
async def test_head_answered_with_a_body_does_not_poison_the_next_request(kind: str) -> None:
    """Some frameworks (aiohttp's StreamResponse among them) send the body to HEAD anyway."""

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n")  # 30 bytes, as announced

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        resp, body = await fetch(client, req("HEAD", "/", timeout=0.5))
        assert (resp.status, body) == (200, b"")
        resp, body = await fetch(client, req("GET", "/", timeout=0.5))
        assert (resp.status, body) == (200, b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n")
        assert "X-Evil" not in resp.headers


@pytest.mark.parametrize("code", [204, 304])
async def test_no_body_statuses_then_reuse(kind: str, code: int) -> None:
    async with AppBackend() as app, upstream(kind, app.url) as client:
        resp, body = await fetch(client, req("GET", f"/status/{code}"))
        assert (resp.status, body, resp.headers["ETag"]) == (code, b"", '"v1"')
        resp, body = await fetch(client, req("GET", "/chunked"))
        assert body == b"hello chunked world"
    assert len(set(app.peers)) == 1


async def test_304_with_content_length_has_no_body(kind: str) -> None:
    response = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: x\r\n\r\n"
    async with RawServer(raw(response)) as server, upstream(kind, server.url) as client:
        resp, body = await fetch(client, req("GET", "/"))
        assert (resp.status, body) == (304, b"")
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"ok"
    assert server.accepted == 1


async def test_interim_responses_are_skipped(kind: str) -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: 1\r\n\r\nfinal"
    )
    async with RawServer(raw(response)) as server, upstream(kind, server.url) as client:
        resp, body = await fetch(client, req("GET", "/"))
        assert (resp.status, body, resp.headers["X-Final"]) == (200, b"final", "1")
        assert "Link" not in resp.headers
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"ok"
    assert server.accepted == 1


async def test_chunked_response_with_extensions_and_trailers(kind: str) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n1a\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with RawServer(raw(response)) as server, upstream(kind, server.url) as client:
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"hello " + b"z" * 26
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"ok"
    assert server.accepted == 1


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_close_delimited_body(kind: str, version: str) -> None:
    payload = b"x" * 300_000 + b"end"
    response = f"HTTP/{version} 200 OK\r\nConnection: close\r\n\r\n".encode() + payload
    async with (
        RawServer(raw(response, then="close")) as server,
        upstream(kind, server.url) as client,
    ):
        resp, body = await fetch(client, req("GET", "/"))
        assert (resp.status, body) == (200, payload)
        _, body = await fetch(client, req("GET", "/"))  # a new connection
        assert body == payload
    assert server.accepted == 2


async def test_connection_close_is_not_reused(kind: str) -> None:
    """The upstream says close but leaves the socket open: the client must not reuse it."""

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        await server.read_request(reader)
        writer.write(ok(extra="Connection: close\r\n"))
        await asyncio.sleep(30)

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        for _ in range(2):
            _, body = await fetch(client, req("GET", "/", timeout=1))
            assert body == b"ok"
    assert server.accepted == 2


async def test_early_answer_while_the_body_is_still_being_sent(kind: str) -> None:
    """The upstream refuses after the headers and stops reading: the answer still comes back."""

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        if index > 0:
            return await serve_ok(server, reader, writer, index)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 7\r\n\r\ntoo big")
        await asyncio.sleep(30)  # reads nothing more

    produced = [0]
    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        headers = {"Content-Length": str(50 * MB)}
        async with asyncio.timeout(5):
            resp, body = await fetch(client, req("POST", "/", headers, gen(50 * MB, produced)))
        assert (resp.status, body) == (413, b"too big")
        assert produced[0] < 50 * MB
        _, body = await fetch(client, req("GET", "/"))  # not on the half-sent connection
        assert body == b"ok"
    assert server.accepted == 2


async def test_cr_lf_in_a_request_header_is_never_sent(kind: str) -> None:
    async with RawServer(serve_ok) as server, upstream(kind, server.url) as client:
        for name, value in [("X-A", "1\r\nX-Smuggled: 1"), ("X-B", "1\nX-Smuggled: 1")]:
            with pytest.raises((UpstreamError, ValueError)):
                await fetch(client, req("GET", "/", {name: value}))
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"ok"
    assert not any(b"smuggled" in head.lower() for head in server.requests)


# -- Expect: 100-continue ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "sends_continue"),
    [
        ("aiohttp", True),
        ("lean", True),
        pytest.param(
            "aiohttp",
            False,
            marks=pytest.mark.xfail(
                strict=True,
                reason="aiohttp waits for 100 Continue (past its read timeout: the test's own "
                "2 s bound fires)",
                raises=TimeoutError,
            ),
        ),
        ("lean", False),
    ],
)
async def test_expect_100_continue(kind: str, sends_continue: bool) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        server.requests.append(head)
        if sends_continue and b"expect: 100-continue" in head.lower():
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(5)
        writer.write(ok(body))
        await asyncio.sleep(30)

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        headers = {"Expect": "100-continue", "Content-Length": "5"}
        async with asyncio.timeout(2):  # aiohttp's read timeout does not cover that wait
            resp, body = await fetch(client, req("PUT", "/", headers, once(b"hello"), timeout=0.5))
    assert (resp.status, body) == (200, b"hello")
    if kind == "lean":  # it strips Expect (and never waits for 100) rather than guess a delay
        assert b"expect" not in server.requests[0].lower()


# -- failures ------------------------------------------------------------------------------------


async def test_stale_connection_is_retried_for_get_not_post(kind: str) -> None:
    """The upstream closes a kept-alive connection just as the next request arrives."""

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        if index % 2 == 0:  # serve one request, then drop the connection on the next one
            await server.read_request(reader)
            writer.write(ok(b"first"))
            await server.read_request(reader)
            return
        await serve_ok(server, reader, writer, index)

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"first"
        resp, body = await fetch(client, req("GET", "/"))
        assert (resp.status, body) == (200, b"ok")
        assert server.accepted == 2

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        _, body = await fetch(client, req("POST", "/", {"Content-Length": "0"}))
        assert body == b"first"
        with pytest.raises(UpstreamResetError):
            await fetch(client, req("POST", "/", {"Content-Length": "0"}))
        assert server.accepted == 1


async def test_connect_refused(kind: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with upstream(kind, f"http://127.0.0.1:{port}") as client:
        with pytest.raises(UpstreamConnectError):
            await client.send(req("GET", "/"))


async def test_connect_timeout(kind: str) -> None:
    """A listener whose accept queue is full drops SYNs: the connect never completes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(listener.getsockname())
                fillers.append(s)
            await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            async with upstream(kind, url, connect_timeout="300ms") as client:
                with pytest.raises(UpstreamConnectError):
                    await client.send(req("GET", "/"))
        finally:
            for s in fillers:
                s.close()


async def test_no_answer_times_out(kind: str) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        await server.read_request(reader)
        await asyncio.sleep(30)

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        with pytest.raises(UpstreamTimeoutError):
            await client.send(req("GET", "/", timeout=0.3))


async def test_an_answer_given_up_at_the_deadline_is_read_late_and_the_connection_kept(
    kind: str,
) -> None:
    async with AppBackend() as app, upstream(kind, app.url) as client:
        request = req("GET", "/late?s=0.3", timeout=0.1)
        request.linger = 3.0  # the backend still works on it: its answer is awaited
        with pytest.raises(UpstreamAbandoned) as info:
            await client.send(request)
        late = info.value.late
        assert await late.status() == 200
        await late.finish()
        late.close()  # (finished: nothing to cut)
        resp, _ = await fetch(client, req("GET", "/echo"))
        assert resp.status == 200
    assert len(app.peers) == 2
    assert len(set(app.peers)) == 1  # the late answer's connection was kept, then reused


async def test_a_late_answer_past_its_linger_times_out(kind: str) -> None:
    async with AppBackend() as app, upstream(kind, app.url) as client:
        request = req("GET", "/late?s=5", timeout=0.1)
        request.linger = 0.2
        with pytest.raises(UpstreamAbandoned) as info:
            await client.send(request)
        with pytest.raises(UpstreamTimeoutError):
            await info.value.late.status()
        resp, _ = await fetch(client, req("GET", "/echo"))  # a new connection serves
        assert resp.status == 200
    assert len(set(app.peers)) == 2


async def test_stall_mid_body_times_out(kind: str) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await asyncio.sleep(30)

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        resp = await client.send(req("GET", "/", timeout=0.3))
        try:
            with pytest.raises(UpstreamTimeoutError):
                await read_all(resp)
        finally:
            resp.release()


@pytest.mark.parametrize(
    "response",
    [b"SSH-2.0-OpenSSH_9.0\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad\r\n\r\n"],
)
async def test_garbage_response(kind: str, response: bytes) -> None:
    async with RawServer(raw(response)) as server, upstream(kind, server.url) as client:
        with pytest.raises(UpstreamProtocolError):
            await client.send(req("GET", "/"))


async def test_upgrade_response_is_refused(kind: str) -> None:
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with RawServer(raw(response)) as server, upstream(kind, server.url) as client:
        with pytest.raises((UpstreamProtocolError, UpstreamResetError)):
            await fetch(client, req("GET", "/"))


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_connection_lost_mid_body(kind: str, how: str, framing: str) -> None:
    if framing == "chunked":
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n"
    else:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
    broken = raw(response, then=how)

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        await (broken if index == 0 else serve_ok)(server, reader, writer, index)

    async with RawServer(handler) as server, upstream(kind, server.url) as client:
        resp = await client.send(req("GET", "/"))
        try:
            with pytest.raises(UpstreamResetError):
                await read_all(resp)
        finally:
            resp.release()
        _, body = await fetch(client, req("GET", "/"))  # the pool recovers
        assert body == b"ok"
    assert server.accepted == 2


# -- the pool ------------------------------------------------------------------------------------


async def slow_ok(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
) -> None:
    while await server.read_request(reader) is not None:
        await asyncio.sleep(0.05)
        writer.write(ok())


async def test_pool_bound_and_queue(kind: str) -> None:
    async with RawServer(slow_ok) as server, upstream(kind, server.url, pool_size=2) as client:
        results = await asyncio.gather(*(fetch(client, req("GET", "/")) for _ in range(5)))
    assert [body for _, body in results] == [b"ok"] * 5
    assert server.max_open <= 2
    assert server.accepted == 2


@pytest.mark.parametrize("when", ["while-waiting", "as-handed-over"])
async def test_cancelled_waiter_leaks_nothing(kind: str, when: str) -> None:
    async with RawServer(slow_ok) as server, upstream(kind, server.url, pool_size=1) as client:
        first = await client.send(req("GET", "/"))
        waiter = asyncio.create_task(fetch(client, req("GET", "/")))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        if when == "while-waiting":
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert await read_all(first) == b"ok"  # the end of the body hands the connection on
        first.release()
        if when == "as-handed-over":
            waiter.cancel()  # before it could run
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with asyncio.timeout(2):  # a leaked slot or connection would hang here
            for _ in range(3):
                _, body = await fetch(client, req("GET", "/"))
                assert body == b"ok"
        if kind == "lean":
            assert client.stats()["open"] == 1 and client.stats()["waiting"] == 0
    # The lean pool never opens past its size. aiohttp's connector, under load, now and then
    # opens one more connection for a waiter cancelled while a connection is handed to it
    # (seen twice in full runs; never with the lean pool): bounded, not leaked.
    assert server.max_open == 1 if kind == "lean" else server.max_open <= 2


async def test_idle_connections_are_closed(kind: str) -> None:
    async with (
        RawServer(serve_ok) as server,
        upstream(kind, server.url, pool_idle_timeout="200ms") as client,
    ):
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"ok" and server.open == 1
        for _ in range(100):
            if server.open == 0:
                break
            await asyncio.sleep(0.05)
        assert server.open == 0
        _, body = await fetch(client, req("GET", "/"))
        assert body == b"ok"
    assert server.accepted == 2


class ClientGone(Exception):
    pass


@pytest.mark.parametrize(
    "kind",
    [
        aiohttp_fails(
            "aiohttp wraps it in a ClientConnectionError, mapped to UpstreamResetError",
            raises=UpstreamResetError,
        ),
        "lean",
    ],
)
async def test_request_body_error_propagates_and_frees_the_connection(kind: str) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise ClientGone

    async with RawServer(serve_ok) as server, upstream(kind, server.url, pool_size=1) as client:
        with pytest.raises(ClientGone):
            await client.send(req("POST", "/", body=broken()))
        async with asyncio.timeout(2):
            _, body = await fetch(client, req("GET", "/"))
        assert body == b"ok"


# -- the lean client on uvloop (the loop Sluice runs on) ---------------------------------------

UVLOOP_SCENARIOS: dict[str, Callable[[], Awaitable[None]]] = {
    "post-echo": lambda: test_methods_targets_and_bodies_byte_exact("lean", "POST", TARGETS[2]),
    "upload": lambda: test_large_upload_streams("lean", "chunked"),
    "upload-back-pressure": lambda: test_upload_back_pressure("lean"),
    "download-back-pressure": lambda: test_download_back_pressure("lean"),
    "head": lambda: test_head_has_no_body("lean"),
    "interim": lambda: test_interim_responses_are_skipped("lean"),
    "close-delimited": lambda: test_close_delimited_body("lean", "1.1"),
    "stale-retry": lambda: test_stale_connection_is_retried_for_get_not_post("lean"),
    "lost-mid-body": lambda: test_connection_lost_mid_body("lean", "reset", "chunked"),
    "stall": lambda: test_stall_mid_body_times_out("lean"),
    "pool-bound": lambda: test_pool_bound_and_queue("lean"),
    "cancelled-waiter": lambda: test_cancelled_waiter_leaks_nothing("lean", "as-handed-over"),
    "idle": lambda: test_idle_connections_are_closed("lean"),
}


@pytest.mark.parametrize("scenario", list(UVLOOP_SCENARIOS))
def test_lean_on_uvloop(scenario: str) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(UVLOOP_SCENARIOS[scenario]())
