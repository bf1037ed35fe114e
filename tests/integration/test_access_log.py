"""The access log and the upstream failure log against real sockets: Sluice's own answers (a
`503 shield`, the guard's `400`, a `502 upstream-connect`) each get a line with their reason,
status, peer and request id; a burst past `logging.lines_per_s` is counted, and the count
logged; and who says what in `Server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.support import free_port, running_backend, running_sluice, sluice_config, wait_for

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"
NO_HOLD = {"hold_max": "0s"}  # refusals answered at once, not paced


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sluice")
    return caplog


def lines(caplog: pytest.LogCaptureFixture, msg: str, logger: str) -> list[dict[str, Any]]:
    """The fields of every `msg` line `logger` wrote."""
    return [vars(r) for r in caplog.records if r.name == logger and r.getMessage() == msg]


def answer_line(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    [line] = [f for f in lines(caplog, "answer", "sluice.access") if f["request_id"] == request_id]
    return line


async def get(port: int, path: str, **headers: str) -> tuple[int, CIMultiDict[str]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        await r.read()
        return r.status, r.headers.copy()  # case-insensitive, as HTTP's are


async def test_a_shield_refusal_is_logged_with_its_reason_peer_request_id_and_trace(
    logs: pytest.LogCaptureFixture,
) -> None:
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url, shedding=NO_HOLD)) as server,
    ):
        server.sluice.gate.command("shield", ttl="10m")
        status, headers = await get(server.proxy_port, "/echo/a?secret=1", traceparent=TRACEPARENT)
    assert (status, headers["x-sluice-reason"]) == (503, "shield")
    line = answer_line(logs, headers["x-request-id"])
    assert line["status"] == 503
    assert line["reason"] == "shield"
    assert line["peer"] == "127.0.0.1"
    assert line["mode"] == "SHIELD"
    assert (line["method"], line["path"]) == ("GET", "/echo/a")
    assert line["trace_id"] == TRACE
    assert line["bytes"] == int(headers["Content-Length"])
    assert line["total_ms"] is not None and line["queue_ms"] is not None
    assert not backend.requests


async def test_the_guard_s_bad_request_is_logged_with_a_request_id(
    logs: pytest.LogCaptureFixture,
) -> None:
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url)) as server,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.proxy_port)
        writer.write(b"GET /echo/x HTTP/1.1\r\nHost: s\r\nNo colon here\r\n\r\n")
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
        writer.close()
    status_line, *header_lines = head.strip().split("\r\n")
    reply = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert status_line.split()[1] == "400"
    line = answer_line(logs, reply["x-request-id"])
    assert (line["status"], line["reason"], line["peer"]) == (400, "bad-request", "127.0.0.1")
    assert reply["server"] == "sluice"


async def test_a_slow_client_s_408_and_an_oversized_body_s_413_are_logged(
    logs: pytest.LogCaptureFixture,
) -> None:
    listen = {"host": "127.0.0.1", "port": 0, "header_read_timeout": "200ms", "max_body_size": 10}
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url, listen=listen)) as server,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.proxy_port)
        writer.write(b"GET /echo/x HTTP/1.1\r\nHost: s\r\n")  # the headers never end
        slow = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{server.proxy_port}/echo/x", data=b"x" * 100) as r,
        ):
            too_large = (r.status, r.headers.copy())
    head, _, _ = slow.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    reply = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert (status_line.split()[1], reply["server"]) == ("408", "sluice")
    line = answer_line(logs, reply["x-request-id"])
    assert (line["status"], line["reason"], line["peer"]) == (408, "bad-request", "127.0.0.1")
    assert too_large[0] == 413
    line = answer_line(logs, too_large[1]["x-request-id"])
    assert (line["status"], line["reason"], line["method"]) == (413, "bad-request", "POST")
    assert not backend.requests


@pytest.mark.parametrize(
    ("client", "cause"),
    [("lean", "ConnectionRefusedError"), ("aiohttp", "ClientConnectorError")],
)
async def test_an_upstream_connect_failure_is_logged_twice_with_its_cause(
    logs: pytest.LogCaptureFixture, client: str, cause: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = sluice_config(closed, upstream={"client": client})
    async with running_sluice(config) as server:
        status, headers = await get(server.proxy_port, "/token")
    assert (status, headers["x-sluice-reason"]) == (502, "upstream-connect")
    request_id = headers["x-request-id"]
    line = answer_line(logs, request_id)
    assert (line["status"], line["reason"], line["peer"]) == (502, "upstream-connect", "127.0.0.1")
    assert line["upstream_error"] == "connect"
    [failure] = [
        f
        for f in lines(logs, "upstream failed", "sluice.upstream")
        if f["request_id"] == request_id
    ]
    assert (failure["kind"], failure["stage"], failure["cause"]) == ("connect", "request", cause)
    assert failure["error"] == "UpstreamConnectError"
    assert failure["detail"]


async def test_a_burst_past_the_budget_is_counted_and_the_count_logged(
    logs: pytest.LogCaptureFixture,
) -> None:
    burst = 60
    config = sluice_config("http://127.0.0.1:9", shedding=NO_HOLD, logging={"lines_per_s": 5})
    async with running_sluice(config) as server:
        server.sluice.gate.command("shield", ttl="10m")
        async with aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.get(f"http://127.0.0.1:{server.proxy_port}/t") as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one() for _ in range(burst)))
        assert statuses == [503] * burst

        def accounted() -> tuple[int, int]:
            written = len(lines(logs, "answer", "sluice.access"))
            summaries = lines(logs, "lines suppressed", "sluice.access")
            return written, sum(f["by_reason"].get("shield", 0) for f in summaries)

        # Every answer is either written or counted in a "lines suppressed" line.
        await wait_for(lambda: sum(accounted()) == burst)
    written, suppressed = accounted()
    assert 0 < written < burst
    assert suppressed > 0


# --- Server -------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def raw_backend() -> AsyncIterator[int]:
    """A backend that says `Server: token-backend/2` under /named, and no Server elsewhere
    (aiohttp would always add one)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        server = b"Server: token-backend/2\r\n" if b" /named" in head else b""
        writer.write(
            b"HTTP/1.1 200 OK\r\n" + server + b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(listener.sockets[0].getsockname()[1])
    finally:
        listener.close()
        await listener.wait_closed()


async def test_own_answers_say_sluice_and_forwarded_ones_keep_the_backend_s_server() -> None:
    async with (
        raw_backend() as port,
        running_sluice(sluice_config(f"http://127.0.0.1:{port}", shedding=NO_HOLD)) as server,
    ):
        proxy = server.proxy_port
        named = await get(proxy, "/named")
        unnamed = await get(proxy, "/plain")
        server.sluice.gate.command("shield", ttl="10m")
        refused = await get(proxy, "/named")
    assert (named[0], named[1]["Server"]) == (200, "token-backend/2")
    assert (unnamed[0], unnamed[1]["Server"]) == (200, "sluice")  # not aiohttp's, with versions
    assert (refused[0], refused[1]["Server"]) == (503, "sluice")


async def test_a_server_that_does_not_log_does_not_break(logs: pytest.LogCaptureFixture) -> None:
    # `access_log: false`: answers flow, and not one access line is written.
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url, logging={"access_log": False})) as server,
    ):
        server.sluice.gate.command("shield", ttl="10m")
        status, _ = await get(server.proxy_port, "/echo/a")
    assert status == 503
    assert not lines(logs, "answer", "sluice.access")
