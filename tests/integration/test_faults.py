"""Upstream faults, through a real Sluice on loopback, against a raw-socket backend that
misbehaves on purpose: accepts and never answers, answers garbage, resets before or in the
middle of the body, trickles a body byte by byte, or stalls half-way.

Each fault must end in the right explicit answer (504 `upstream-timeout`, 502
`upstream-error`) or, once response headers are gone, in a broken client response; and in
every case nothing leaks: Sluice's in-flight count, the `sluice_in_flight` gauge, the gate's
in-flight count and its queue all return to 0.

Runs on both upstream clients when the lean pool is importable (checked at collection), and
with protection off and on (the real admission gate).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from proxy.edge.lifecycle import Server
from tests.support import running_sluice, sluice_config, wait_for

CLIENTS = ["aiohttp"]
if importlib.util.find_spec("proxy.upstream.lean") is not None:
    CLIENTS.append("lean")
PROTECTIONS = ["off"]
if importlib.util.find_spec("proxy.admission.gate") is not None:
    PROTECTIONS.append("on")

READ_TIMEOUT = 0.3


class FaultBackend:
    """A raw asyncio HTTP/1.1 server whose behaviour is chosen by the request path."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                target = head.split(b" ", 2)[1].decode()
                self.seen.append(target)
                if not await self._answer(target, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            writer.transport.abort()

    async def _answer(self, target: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False to end the connection."""
        parts = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path in ("/ok", "/healthz"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return True
        if path == "/never":
            await asyncio.Event().wait()  # accept, read, never answer
        if path == "/garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\nthis is not http\r\n\r\n")
            await writer.drain()
            return False
        if path == "/bad-length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\nhello")
            await writer.drain()
            return False
        if path == "/reset-before":
            self._rst(writer)
            return False
        length = int(q.get("length", "1000000"))
        chunked = q.get("chunked") == "1"
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
        if path == "/trickle":
            gap = float(q.get("gap", "0.01"))
            for i in range(length):
                writer.write(bytes([65 + i % 26]))
                await writer.drain()
                await asyncio.sleep(gap)
            return True
        sent = int(q.get("send", "10"))
        data = b"x" * sent
        writer.write(b"%x\r\n%s\r\n" % (sent, data) if chunked else data)
        await writer.drain()
        if path == "/reset-mid-body":
            await asyncio.sleep(0.05)
            self._rst(writer)
            return False
        if path == "/stall":
            await asyncio.Event().wait()
        raise AssertionError(f"unknown fault path {path}")

    @staticmethod
    def _rst(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


@pytest.fixture
async def backend() -> AsyncIterator[FaultBackend]:
    b = FaultBackend()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture(params=CLIENTS)
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=PROTECTIONS)
def protection(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def sluice(backend: FaultBackend, client_kind: str, protection: str) -> AsyncIterator[Server]:
    config = sluice_config(
        backend.url,
        upstream={
            "url": backend.url,
            "client": client_kind,
            "read_timeout": f"{int(READ_TIMEOUT * 1000)}ms",
            "connect_timeout": "1s",
        },
        modes={"protection": protection},
    )
    async with running_sluice(config) as server:
        yield server
        await assert_nothing_leaked(server)


def gauge(server: Server, name: str, **labels: str) -> float:
    return server.sluice.metrics.registry.get_sample_value(name, labels) or 0.0


async def assert_nothing_leaked(server: Server) -> None:
    sluice = server.sluice
    await wait_for(lambda: sluice.in_flight == 0)
    assert gauge(server, "sluice_in_flight") == 0
    status = sluice.gate.status()
    assert status["in_flight"] == 0
    assert status.get("queue", {}).get("total", 0) == 0
    queued = [
        s.value
        for family in sluice.metrics.registry.collect()
        if family.name == "sluice_queue_depth"
        for s in family.samples
    ]
    assert sum(queued) == 0


async def get(server: Server, path: str) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{server.proxy_port}{path}") as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def test_a_healthy_request_passes(sluice: Server) -> None:
    # The control: the backend answers normally and the same assertions hold.
    assert (await get(sluice, "/ok"))[::2] == (200, b"ok")


async def test_upstream_that_never_answers_gives_504(sluice: Server, backend: FaultBackend) -> None:
    status, headers, body = await asyncio.wait_for(get(sluice, "/never"), 10)
    assert status == 504
    assert headers["x-sluice-reason"] == "upstream-timeout"
    assert int(headers["Retry-After"]) >= 1
    assert b"upstream-timeout" in body
    assert backend.seen.count("/never") == 1  # Sluice does not retry on its own


@pytest.mark.parametrize("path", ["/garbage", "/bad-length", "/reset-before"])
async def test_garbage_or_reset_before_the_answer_gives_502(sluice: Server, path: str) -> None:
    status, headers, body = await asyncio.wait_for(get(sluice, path), 10)
    assert status == 502
    assert headers["x-sluice-reason"] == "upstream-error"
    assert b"upstream-error" in body


@pytest.mark.parametrize("query", ["length=1000000&send=100000", "chunked=1&send=100000"])
async def test_reset_mid_body_breaks_the_client_response(sluice: Server, query: str) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(get(sluice, f"/reset-mid-body?{query}"), 10)


async def test_reset_mid_small_body_is_still_an_explicit_502(sluice: Server) -> None:
    # Small bodies are read whole before answering, so the client can still be told.
    status, headers, _ = await asyncio.wait_for(
        get(sluice, "/reset-mid-body?length=20000&send=1000"), 10
    )
    assert (status, headers["x-sluice-reason"]) == (502, "upstream-error")


async def test_body_trickled_byte_by_byte_within_the_timeout_passes(sluice: Server) -> None:
    # 60 bytes, one every 10 ms: each gap is far inside the 300 ms read timeout.
    status, _, body = await asyncio.wait_for(get(sluice, "/trickle?length=60&gap=0.01"), 10)
    assert status == 200
    assert body == bytes(65 + i % 26 for i in range(60))


async def test_small_body_stalling_past_the_read_timeout_gives_504(sluice: Server) -> None:
    status, headers, _ = await asyncio.wait_for(get(sluice, "/stall?length=5000&send=100"), 10)
    assert (status, headers["x-sluice-reason"]) == (504, "upstream-timeout")


@pytest.mark.parametrize("query", ["length=1000000&send=100000", "chunked=1&send=100000"])
async def test_large_body_stalling_past_the_read_timeout_aborts(sluice: Server, query: str) -> None:
    # Headers and part of the body are already with the client: the only honest end is a
    # broken connection, never a short body that looks complete.
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(get(sluice, f"/stall?{query}"), 10)


async def test_faults_do_not_poison_the_pool(sluice: Server) -> None:
    for path in ("/garbage", "/reset-before", "/stall?length=5000&send=10"):
        with contextlib.suppress(aiohttp.ClientError):
            await asyncio.wait_for(get(sluice, path), 10)
        assert (await get(sluice, "/ok"))[::2] == (200, b"ok")
