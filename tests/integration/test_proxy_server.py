"""What aiohttp's Application did for the proxy listener, which is served by the low-level
`web.Server` now: `Expect: 100-continue` answered before the body, other expectations 417,
`/metrics` on the proxy port only when `listen.expose_metrics` says so.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from tests.support import running_backend, running_sluice, sluice_config


async def _raw(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def test_expect_100_continue_then_the_body_is_forwarded() -> None:
    async with running_backend() as backend, running_sluice(sluice_config(backend.url)) as server:
        reader, writer = await _raw(
            server.proxy_port,
            b"PUT /echo/x HTTP/1.1\r\nHost: t\r\nx-retry-attempt: 0\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        try:
            async with asyncio.timeout(5):
                interim = await reader.readuntil(b"\r\n\r\n")
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(b"hello")
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                doc = orjson.loads(await reader.readexactly(length))
        finally:
            writer.close()
        assert doc["body"] == "hello"
        assert doc["method"] == "PUT"


async def test_unknown_expectation_is_417_and_not_forwarded() -> None:
    async with running_backend() as backend, running_sluice(sluice_config(backend.url)) as server:
        reader, writer = await _raw(
            server.proxy_port,
            b"GET /echo/y HTTP/1.1\r\nHost: t\r\nExpect: something-else\r\n\r\n",
        )
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 417 ")
        assert backend.requests == []


@pytest.mark.parametrize("expose", [True, False])
async def test_metrics_on_the_proxy_port_only_when_exposed(expose: bool) -> None:
    async with running_backend() as backend:
        config = sluice_config(
            backend.url, listen={"host": "127.0.0.1", "port": 0, "expose_metrics": expose}
        )
        async with running_sluice(config) as server, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.proxy_port}/metrics"
            async with session.get(url, headers={"x-retry-attempt": "0"}) as resp:
                text = await resp.text()
        if expose:
            assert resp.status == 200
            assert "sluice_requests" in text
            assert backend.requests == []
        else:  # an ordinary path, forwarded (the echo backend does not serve it: 404)
            assert resp.status == 404
            assert "sluice_requests" not in text
