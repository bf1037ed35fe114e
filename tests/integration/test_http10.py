"""HTTP/1.0 clients get the backend's body relayed, whatever framing the backend used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support import running_sluice, sluice_config

BODY = b"token-" * 4000  # 24 kB: past the small-body buffer, so it is streamed


async def _chunked(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    for i in range(0, len(BODY), 1000):
        part = BODY[i : i + 1000]
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def _close_delimited(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    for i in range(0, len(BODY), 1000):
        writer.write(BODY[i : i + 1000])
        await writer.drain()


FRAMINGS = {"chunked": _chunked, "close-delimited": _close_delimited}


@pytest.fixture(params=sorted(FRAMINGS))
async def backend_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    send = FRAMINGS[request.param]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await send(writer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_http10_client_gets_a_streamed_body_intact(backend_url: str, client: str) -> None:
    config = sluice_config(backend_url, upstream={"client": client})
    async with running_sluice(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.proxy_port)
        writer.write(b"GET /metadata/identity/oauth2/token HTTP/1.0\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):  # guards against a hang only
            raw = await reader.read(-1)  # HTTP/1.0: the answer ends when the connection does
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    assert status_line.startswith(b"HTTP/1.0 200") or status_line.startswith(b"HTTP/1.1 200"), head
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in header_lines)
    }
    assert b"transfer-encoding" not in headers  # no chunked framing to a 1.0 client
    if b"content-length" in headers:
        assert int(headers[b"content-length"]) == len(BODY)
    assert body == BODY
