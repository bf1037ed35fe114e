"""The transparent proxy: bytes, headers, streaming and upstream failures, on loopback."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from proxy.edge.lifecycle import Server
from tests.support import (
    EchoBackend,
    free_port,
    running_backend,
    running_sluice,
    sluice_config,
    wait_for,
)

PROTECTION = "off"


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with running_backend() as b:
        yield b


@pytest.fixture(params=["aiohttp", "lean"])
async def sluice(backend: EchoBackend, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    config = sluice_config(
        backend.url,
        modes={"protection": PROTECTION},
        upstream={"client": request.param},
        listen={"host": "127.0.0.1", "port": 0, "max_body_size": 64 * 1024 * 1024},
    )
    async with running_sluice(config) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.proxy_port}{path}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_methods_bodies_and_queries_pass_byte_exact(
    sluice: Server, client: aiohttp.ClientSession, method: str
) -> None:
    body = bytes(range(256)) * 7 + "é€".encode() if method != "GET" else b""
    target = "/echo/a%2Fb/%7E/c?x=1&y=%20z&x=2&empty=&t=%7E"
    exact = URL(url(sluice, target), encoded=True)  # the test client must not re-quote either
    async with client.request(method, exact, data=body or None) as resp:
        assert resp.status == 200
        doc = orjson.loads(await resp.read())
    assert doc["method"] == method
    assert doc["path_qs"] == target
    assert doc["body"].encode("latin-1") == body


async def test_gzip_bytes_and_content_encoding_untouched(
    sluice: Server, backend: EchoBackend, client: aiohttp.ClientSession
) -> None:
    payload = b"\x1f\x8b\x08\x00binary-gzip-looking-bytes"
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    async with client.post(url(sluice, "/echo"), data=payload, headers=headers) as resp:
        doc = orjson.loads(await resp.read())
    sent = dict((k.lower(), v) for k, v in doc["headers"])
    assert sent["content-encoding"] == "gzip"
    assert doc["body"].encode("latin-1") == payload


async def test_large_bodies_stream_both_ways(sluice: Server, client: aiohttp.ClientSession) -> None:
    size = 20 * 1024 * 1024
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    expected = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            expected.update(block)
            yield block

    async with client.post(url(sluice, "/sha"), data=upload()) as resp:
        doc = await resp.json()
    assert doc == {"sha256": expected.hexdigest(), "size": size}

    got = hashlib.sha256()
    total = 0
    async with client.get(url(sluice, f"/big/{size}")) as resp:
        assert resp.headers["Content-Length"] == str(size)
        async for chunk in resp.content.iter_any():
            got.update(chunk)
            total += len(chunk)
    ref = hashlib.sha256()
    pattern = bytes(range(256)) * 256
    for _ in range(size // len(pattern)):
        ref.update(pattern)
    assert total == size
    assert got.hexdigest() == ref.hexdigest()


@pytest.mark.parametrize("declared", [True, False])
async def test_oversized_body_refused_with_413(
    backend: EchoBackend, client: aiohttp.ClientSession, declared: bool
) -> None:
    config = sluice_config(
        backend.url,
        modes={"protection": PROTECTION},
        listen={"host": "127.0.0.1", "port": 0, "max_body_size": 100_000},
    )
    data: Any = b"x" * 200_000
    if not declared:  # chunked: the limit must be enforced while streaming

        async def gen() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * 10_000

        data = gen()
    async with running_sluice(config) as server:
        async with client.post(url(server, "/sha"), data=data) as resp:
            assert resp.status == 413
            assert resp.headers["x-sluice-reason"] == "bad-request"
        async with client.post(url(server, "/sha"), data=b"small") as resp:
            assert resp.status == 200
        await wait_for(lambda: server.sluice.in_flight == 0)


async def test_hop_by_hop_headers_stripped_both_ways(
    sluice: Server, backend: EchoBackend, client: aiohttp.ClientSession
) -> None:
    headers = {
        "Connection": "keep-alive, x-private",
        "x-private": "drop me",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9v",
        "Upgrade": "websocket",
        "x-end-to-end": "keep me",
    }
    async with client.get(url(sluice, "/echo"), headers=headers) as resp:
        doc = orjson.loads(await resp.read())
    sent = {k.lower() for k, _ in doc["headers"]}
    for name in ("x-private", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in sent, name
    assert "x-end-to-end" in sent

    async with client.get(url(sluice, "/hop")) as resp:
        assert await resp.text() == "hop"
        got = {k.lower() for k in resp.headers}
    assert "x-secret-hop" not in got
    assert "keep-alive" not in got
    assert "proxy-authenticate" not in got
    assert resp.headers["x-end-to-end"] == "kept"


async def test_forwarded_headers_appended_for_trusted_peer(
    sluice: Server, client: aiohttp.ClientSession
) -> None:
    async with client.get(url(sluice, "/echo"), headers={"X-Forwarded-For": "203.0.113.7"}) as r:
        doc = orjson.loads(await r.read())
    sent = {k.lower(): v for k, v in doc["headers"]}
    assert sent["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["forwarded"].startswith("for=127.0.0.1;proto=http")
    assert len(sent["x-request-id"]) == 32  # added because the client sent none


async def test_request_id_and_traceparent_pass_through(
    sluice: Server, client: aiohttp.ClientSession
) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {"x-request-id": "abc-123", "traceparent": tp}
    async with client.get(url(sluice, "/echo"), headers=headers) as r:
        doc = orjson.loads(await r.read())
    sent = {k.lower(): v for k, v in doc["headers"]}
    assert sent["x-request-id"] == "abc-123"
    assert sent["traceparent"] == tp


async def test_spoofed_forwarded_headers_from_untrusted_peer_dropped(
    backend: EchoBackend, client: aiohttp.ClientSession
) -> None:
    config = sluice_config(
        backend.url,
        modes={"protection": PROTECTION},
        trust={"sources": ["10.0.0.0/8"]},
    )
    spoof = {
        "X-Forwarded-For": "1.2.3.4",
        "Forwarded": "for=1.2.3.4",
        "X-Forwarded-Proto": "https",
        "x-caller-id": "admin-team",
    }
    async with running_sluice(config) as server:
        port = server.proxy_port
        async with client.get(url(server, "/echo"), headers=spoof) as r:
            doc = orjson.loads(await r.read())
    sent = {k.lower(): v for k, v in doc["headers"]}
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{port}"'
    assert sent["x-forwarded-proto"] == "http"


async def test_upstream_refused_gives_502_with_reason(client: aiohttp.ClientSession) -> None:
    config = sluice_config(f"http://127.0.0.1:{free_port()}", modes={"protection": PROTECTION})
    async with running_sluice(config) as server, client.get(url(server, "/anything")) as resp:
        assert resp.status == 502
        assert resp.headers["x-sluice-reason"] == "upstream-connect"
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["reason"] == "upstream-connect"


async def test_upstream_hang_gives_504_with_reason(
    backend: EchoBackend, client: aiohttp.ClientSession
) -> None:
    config = sluice_config(
        backend.url,
        modes={"protection": PROTECTION},
        upstream={"url": backend.url, "read_timeout": "300ms"},
    )
    async with running_sluice(config) as server, client.get(url(server, "/hang")) as resp:
        assert resp.status == 504
        assert resp.headers["x-sluice-reason"] == "upstream-timeout"
        assert "retry-after-ms" in resp.headers


async def test_upstream_reset_mid_body_breaks_the_client_response(
    sluice: Server, client: aiohttp.ClientSession
) -> None:
    async def fetch() -> bytes:
        async with client.get(url(sluice, "/reset")) as resp:
            assert resp.status == 200
            return await resp.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(fetch(), timeout=5)


async def test_client_disconnect_frees_the_slot_at_once(
    sluice: Server, backend: EchoBackend, client: aiohttp.ClientSession
) -> None:
    # Protection off (this module's Sluice is a plain proxy): the exchange is cut with its
    # caller and nothing waits for the backend's late answer. (With protection on, the lean
    # client keeps the slot until the backend answers: tests/integration/test_abandoned.py.)
    task = asyncio.create_task(client.get(url(sluice, "/hold")))
    await wait_for(lambda: sluice.sluice.in_flight == 1)
    status = sluice.sluice.status()
    assert status["requests_in_progress"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sluice.sluice.in_flight == 0)
    assert sluice.sluice.gate.status()["in_flight"] == 0
    assert sluice.sluice.status()["upstream"].get("lingering", 0) == 0
    backend.release_slow.set()


async def test_metrics_expose_sluice_series(sluice: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(url(sluice, "/echo")) as resp:
        await resp.read()
    async with (
        aiohttp.ClientSession() as plain,  # the exporter may compress
        plain.get(f"http://127.0.0.1:{sluice.admin_port}/metrics") as resp,
    ):
        text = await resp.text()
    assert 'sluice_requests_total{outcome="forwarded",reason=""} 1.0' in text
    for name in ("sluice_in_flight", "sluice_upstream_latency_seconds_bucket", "sluice_mode"):
        assert name in text
