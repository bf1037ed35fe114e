"""Hostile and broken input at the proxy listener, sent over raw sockets (aiohttp's client
refuses to produce most of it): oversized lines and headers, malformed HTTP, request-smuggling
framing, control characters in header values, slowloris, unusable attempt/deadline headers and
a flood of random caller ids.

Every refusal must be the reason table's answer (JSON body, `x-sluice-reason: bad-request`),
and nothing refused may ever reach the backend.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.edge.lifecycle import Server
from tests.support import EchoBackend, running_backend, running_sluice, sluice_config, wait_for

LIMITS = {
    "host": "127.0.0.1",
    "port": 0,
    # Equal line and field limits: the 414/431 split must not depend on them differing.
    "max_line_size": 1024,
    "max_field_size": 1024,
    "max_headers": 20,
    "header_read_timeout": "5s",
}


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with running_backend() as b:
        yield b


@pytest.fixture
async def sluice(backend: EchoBackend) -> AsyncIterator[Server]:
    async with running_sluice(sluice_config(backend.url, listen=LIMITS)) as server:
        yield server


class Reply:
    """One HTTP/1.x response parsed off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return Reply(status, headers, body)


async def read_to_close(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as closed); fails if it never does."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


async def exchange(port: int, data: bytes, replies: int = 1) -> tuple[list[Reply], bytes]:
    """Send raw bytes; read `replies` responses, then everything up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        got = [await asyncio.wait_for(read_reply(reader), 10) for _ in range(replies)]
        rest = await read_to_close(reader)  # the server must close
    finally:
        writer.close()
    return got, rest


def sample(server: Server, name: str, **labels: str) -> float:
    value = server.sluice.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def assert_bad_request(reply: Reply, status: int) -> None:
    assert reply.status == status
    assert reply.headers["x-sluice-reason"] == "bad-request"
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["reason"] == "bad-request"
    assert "retry-after" not in reply.headers


GET = b"GET /echo/ok HTTP/1.1\r\nHost: sluice\r\n"


# --- oversized input --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("what", "request_bytes", "status", "kind"),
    [
        ("url", b"GET /" + b"u" * 1100 + b" HTTP/1.1\r\nHost: s\r\n\r\n", 414, "uri-too-long"),
        ("value", GET + b"X-Big: " + b"v" * 1100 + b"\r\n\r\n", 431, "headers-too-large"),
        ("name", GET + b"X-" + b"n" * 1100 + b": 1\r\n\r\n", 431, "headers-too-large"),
        (
            "count",
            GET + b"".join(b"X-H%d: 1\r\n" % i for i in range(25)) + b"\r\n",
            431,
            "headers-too-large",
        ),
    ],
)
async def test_oversized_url_and_headers_get_414_431(
    sluice: Server,
    backend: EchoBackend,
    what: str,
    request_bytes: bytes,
    status: int,
    kind: str,
) -> None:
    (reply,), rest = await exchange(sluice.proxy_port, request_bytes)
    assert_bad_request(reply, status)
    assert rest == b""  # and the connection is closed
    assert backend.requests == []
    assert sample(sluice, "sluice_bad_input_total", kind=kind) == 1
    assert sample(sluice, "sluice_requests_total", outcome="refused", reason="bad-request") == 1


async def test_input_just_under_the_limits_is_served(sluice: Server, backend: EchoBackend) -> None:
    target = b"/echo/" + b"u" * 1000
    data = (
        b"GET " + target + b" HTTP/1.1\r\nHost: s\r\nConnection: close\r\n"
        b"X-Big: " + b"v" * 1000 + b"\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(16))
    ) + b"\r\n"
    (reply,), _ = await exchange(sluice.proxy_port, data)
    assert reply.status == 200
    assert [r["path_qs"] for r in backend.requests] == [target.decode()]


# --- malformed HTTP ---------------------------------------------------------------------------
MALFORMED = {
    "garbage": b"HELLO THERE\r\n\r\n",
    "tls-on-plain-port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
    "bad-method-char": b"G(T /echo HTTP/1.1\r\nHost: s\r\n\r\n",
    "space-in-target": b"GET /echo/a b HTTP/1.1\r\nHost: s\r\n\r\n",
    "bad-version": b"GET /echo HTTP/1.x\r\nHost: s\r\n\r\n",
    "http-2.0-line": b"GET /echo HTTP/2.0\r\nHost: s\r\n\r\n",
    "http-0.9": b"GET /echo\r\n\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "missing-host-1.1": b"GET /echo HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "duplicate-host": GET + b"Host: other\r\n\r\n",
    "no-colon": GET + b"NoColonHere\r\n\r\n",
    "space-before-colon": GET + b"X-A : b\r\n\r\n",
    "obs-fold": GET + b"X-A: b\r\n  folded\r\n\r\n",
    "bare-lf-line-endings": b"GET /echo HTTP/1.1\nHost: s\n\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: s\r\n\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "websocket-upgrade": GET
    + b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_http_gets_400_and_is_not_forwarded(
    sluice: Server, backend: EchoBackend, name: str
) -> None:
    (reply,), rest = await exchange(sluice.proxy_port, MALFORMED[name])
    assert_bad_request(reply, 400)
    assert rest == b""  # and the connection is closed
    assert backend.requests == []
    assert sample(sluice, "sluice_requests_total", outcome="refused", reason="bad-request") == 1


async def test_parse_errors_do_not_echo_input_or_log_tracebacks(
    sluice: Server, caplog: pytest.LogCaptureFixture
) -> None:
    marker = b"<script>zz-marker</script>"
    for _ in range(3):
        (reply,), _ = await exchange(sluice.proxy_port, b"GET /" + marker + b" HTTP/1.1\r\n\r\n")
        assert reply.status == 400
        assert marker not in reply.body
    refused = [r for r in caplog.records if r.getMessage() == "bad input refused"]
    assert len(refused) == 1  # rate-limited: one line, the counter has all three
    assert not [r for r in caplog.records if r.exc_info]
    assert sample(sluice, "sluice_bad_input_total", kind="malformed") == 3


async def test_absolute_form_target_forwarded_as_origin_form(
    sluice: Server, backend: EchoBackend
) -> None:
    data = (
        b"GET http://evil.example:8080/echo/abs?q=1 HTTP/1.1\r\n"
        b"Host: s\r\nConnection: close\r\n\r\n"
    )
    (reply,), _ = await exchange(sluice.proxy_port, data)
    assert reply.status == 200
    assert reply.json()["path_qs"] == "/echo/abs?q=1"


# --- request smuggling ------------------------------------------------------------------------
SMUGGLED = b"GET /echo/smuggled HTTP/1.1\r\nHost: s\r\n\r\n"
SMUGGLING = {
    "cl-then-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-then-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "duplicate-cl-differing": b"Content-Length: 0\r\nContent-Length: 41\r\n\r\n" + SMUGGLED,
    "duplicate-cl-equal": b"Content-Length: 41\r\nContent-Length: 41\r\n\r\n" + SMUGGLED,
    "cl-list": b"Content-Length: 0, 41\r\n\r\n" + SMUGGLED,
    "cl-negative": b"Content-Length: -1\r\n\r\n" + SMUGGLED,
    "cl-plus-sign": b"Content-Length: +41\r\n\r\n" + SMUGGLED,
    "te-obfuscated": b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-not-final": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-duplicate": (
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "te-space-before-colon": b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-vertical-tab": b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_conflicting_framing_refused_and_never_forwarded(
    sluice: Server, backend: EchoBackend, name: str
) -> None:
    # A good request first on the same connection: the refusal happens mid-connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", sluice.proxy_port)
    try:
        writer.write(b"GET /echo/first HTTP/1.1\r\nHost: s\r\n\r\n")
        ok = await asyncio.wait_for(read_reply(reader), 10)
        writer.write(b"POST /echo/attack HTTP/1.1\r\nHost: s\r\n" + SMUGGLING[name])
        refused = await asyncio.wait_for(read_reply(reader), 10)
        rest = await read_to_close(reader)
    finally:
        writer.close()
    assert ok.status == 200
    assert_bad_request(refused, 400)
    assert rest == b""  # closed: nothing after a framing error is parsed as a request
    assert [r["path_qs"] for r in backend.requests] == ["/echo/first"]
    assert sample(sluice, "sluice_requests_total", outcome="forwarded", reason="") == 1


async def test_transfer_encoding_in_http10_refused(sluice: Server, backend: EchoBackend) -> None:
    # (keep-alive, so llhttp parses both messages and the guard's own check must refuse)
    data = (
        b"POST /echo/a HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n" + SMUGGLED
    )
    (reply,), _ = await exchange(sluice.proxy_port, data)
    assert_bad_request(reply, 400)
    assert backend.requests == []
    assert sample(sluice, "sluice_bad_input_total", kind="framing") == 1


# --- control characters in header values ------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        b"a\rb",  # bare CR
        b"a\nX-Injected: 1",  # bare LF: a header injected into the upstream request
        b"a\r\n\r\nGET /echo/smuggled HTTP/1.1",  # ends the head early: that's a new request
        b"a\x00b",  # NUL
        b"a\x01b",
        b"a\x7fb",
    ],
)
async def test_control_characters_in_header_values_refused(
    sluice: Server, backend: EchoBackend, value: bytes
) -> None:
    data = GET + b"X-Note: " + value + b"\r\n\r\n"
    (reply,), _ = await exchange(sluice.proxy_port, data)
    paths = [r["path_qs"] for r in backend.requests]
    assert_bad_request(reply, 400)
    if value.startswith(b"a\r\n\r\n"):
        # Framed as two requests, the second malformed (no Host). aiohttp refuses what it
        # parsed in the same read as a parse error, so even the harmless first is not served.
        assert paths == []
        assert sample(sluice, "sluice_bad_input_total", kind="malformed") == 1
        return
    assert paths == []
    assert sample(sluice, "sluice_bad_input_total", kind="bad-header-value") == 1


async def test_header_values_reach_the_backend_as_sent(
    sluice: Server, backend: EchoBackend
) -> None:
    # Tabs and obs-text (bytes >= 0x80) are legal in a field value and pass untouched.
    value = b"a\tb \xc3\xa9 c"
    (reply,), _ = await exchange(
        sluice.proxy_port, GET + b"Connection: close\r\nX-Note: " + value + b"\r\n\r\n"
    )
    assert reply.status == 200
    sent = {k.lower(): v for k, v in reply.json()["headers"]}
    assert sent["x-note"].encode("utf-8", "surrogateescape") == value


# --- slowloris --------------------------------------------------------------------------------
@pytest.fixture
async def impatient(backend: EchoBackend) -> AsyncIterator[Server]:
    listen = dict(LIMITS, header_read_timeout="300ms", keepalive_timeout="60s")
    async with running_sluice(sluice_config(backend.url, listen=listen)) as server:
        yield server


async def test_silent_connection_closed_without_an_answer(impatient: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.proxy_port)
    try:
        # keepalive_timeout is 60 s: an EOF well before that is the header-read timer's.
        assert await read_to_close(reader) == b""
    finally:
        writer.close()
    assert sample(impatient, "sluice_bad_input_total", kind="header-timeout") == 1
    assert sample(impatient, "sluice_requests_total", outcome="refused", reason="bad-request") == 0


async def test_headers_dribbled_byte_by_byte_get_408_and_close(
    impatient: Server, backend: EchoBackend
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.proxy_port)
    stop = asyncio.Event()

    async def dribble() -> None:
        for byte in GET + b"X-Slow: " + b"z" * 10_000:
            if stop.is_set() or writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(dribble())
    try:
        reply = await asyncio.wait_for(read_reply(reader), 10)
        assert await read_to_close(reader) == b""
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
    assert reply.status == 408
    assert reply.headers["x-sluice-reason"] == "bad-request"
    assert backend.requests == []
    assert sample(impatient, "sluice_bad_input_total", kind="header-timeout") == 1


async def test_keepalive_idle_is_not_a_header_timeout_but_a_slow_next_request_is(
    impatient: Server, backend: EchoBackend
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.proxy_port)
    try:
        for _ in range(2):
            writer.write(GET + b"\r\n")
            assert (await asyncio.wait_for(read_reply(reader), 10)).status == 200
            await asyncio.sleep(0.6)  # idle for twice the header budget: still open
        writer.write(b"GET /echo/next HTTP/1.1\r\nHo")  # ...and the next request stalls
        reply = await asyncio.wait_for(read_reply(reader), 10)
        assert reply.status == 408
        assert await read_to_close(reader) == b""
    finally:
        writer.close()
    assert [r["path_qs"] for r in backend.requests] == ["/echo/ok", "/echo/ok"]


async def test_slow_body_is_not_cut_by_the_header_timer(
    impatient: Server, backend: EchoBackend
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.proxy_port)
    try:
        writer.write(b"POST /echo/body HTTP/1.1\r\nHost: s\r\nContent-Length: 10\r\n\r\nhello")
        await asyncio.sleep(0.6)  # twice the header budget, after the headers completed
        writer.write(b"world")
        reply = await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()
    assert reply.status == 200
    assert reply.json()["body"] == "helloworld"


async def test_headers_in_pieces_within_the_budget_are_served(
    sluice: Server, backend: EchoBackend
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sluice.proxy_port)
    try:
        for piece in (
            b"GET /echo/pieces HT",
            b"TP/1.1\r\nHost: s\r\n",
            b"Connection: close\r\n\r\n",
        ):
            writer.write(piece)
            await asyncio.sleep(0.05)
        reply = await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()
    assert reply.status == 200
    assert sample(sluice, "sluice_bad_input_total", kind="header-timeout") == 0


# --- attempt and deadline headers -------------------------------------------------------------
async def test_unusable_attempt_and_deadline_headers_are_absent_and_counted(
    sluice: Server, backend: EchoBackend
) -> None:
    bad = ["-1", "abc", "1.5", "", "99999999999999999", "0x10"]
    async with aiohttp.ClientSession() as s:
        for i, value in enumerate(bad):
            headers = {"x-retry-attempt": value, "x-request-timeout-ms": value}
            async with s.get(
                f"http://127.0.0.1:{sluice.proxy_port}/echo/{i}", headers=headers
            ) as r:
                assert r.status == 200
                sent = {k.lower(): v for k, v in (await r.json(content_type=None))["headers"]}
            # treated as absent: no budget is invented, and the garbage is not passed on
            assert "x-request-timeout-ms" not in sent
        good = {"x-retry-attempt": "1", "x-request-timeout-ms": "4000"}
        async with s.get(f"http://127.0.0.1:{sluice.proxy_port}/echo/g", headers=good) as r:
            sent = {k.lower(): v for k, v in (await r.json(content_type=None))["headers"]}
    assert 0 < int(sent["x-request-timeout-ms"]) <= 4000
    assert sample(sluice, "sluice_invalid_headers_total") == 2 * len(bad)
    assert sluice.sluice.snapshot.classifier.invalid_headers.count == 2 * len(bad)


async def test_invalid_header_count_survives_a_reload(sluice: Server) -> None:
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{sluice.proxy_port}/echo/x"
        async with s.get(url, headers={"x-retry-attempt": "nope"}) as r:
            assert r.status == 200
        sluice.sluice.reload(sluice.sluice.snapshot.config)
        async with s.get(url, headers={"x-retry-attempt": "nope"}) as r:
            assert r.status == 200
    assert sample(sluice, "sluice_invalid_headers_total") == 2


# --- random caller ids --------------------------------------------------------------------------
def series(exposition: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) pair in a Prometheus text exposition."""
    out = set()
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out.add((s.name, tuple(sorted(s.labels.items()))))
    return out


@pytest.mark.parametrize("protection", ["off", "on"])
async def test_random_caller_ids_leave_labels_and_caches_bounded(
    backend: EchoBackend, protection: str
) -> None:
    config = sluice_config(
        backend.url,
        listen=LIMITS,
        modes={"protection": protection},
        callers={"known": [{"name": "orch-a"}], "fair_buckets": 8},
        retry_detect={"fingerprint_cache_size": 1000},
    )
    rng = random.Random(6)
    ids = [f"c-{rng.getrandbits(64):016x}" for _ in range(5000)]
    statuses: Counter[str] = Counter()
    async with running_sluice(config) as server:
        admin = f"http://127.0.0.1:{server.admin_port}/metrics"
        url = f"http://127.0.0.1:{server.proxy_port}/echo/x"
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get(admin) as r:
                before = series(await r.text())
            queue = list(ids)

            async def worker() -> None:
                while queue:
                    caller = queue.pop()
                    async with s.get(url, headers={"x-caller-id": caller}) as r:
                        await r.read()
                        statuses[r.headers.get("x-sluice-reason", str(r.status))] += 1

            await asyncio.gather(*(worker() for _ in range(32)))
            async with s.get(admin) as r:
                text = await r.text()
            await wait_for(lambda: server.sluice.in_flight == 0)
        after = series(text)
        sluice = server.sluice
        names = set(sluice.snapshot.classifier.caller_names())
        status = sluice.gate.status()
        for table in ("queue", "slots"):  # the gate's per-caller views, when it has them
            assert set(status.get(table, {}).get("by_caller", {})) <= names
        assert len(names) == 1 + 8
        memory = sluice.snapshot.classifier.memory
        assert len(memory.failures) <= 1000 and len(memory.call_ids) <= 1000
    # Every request got an answer: forwarded, or refused with a reason from the table.
    assert sum(statuses.values()) == 5000
    assert set(statuses) <= {"200", "overload", "caller-cap", "retry-budget", "deadline"}
    forwarded = sample(server, "sluice_requests_total", outcome="forwarded", reason="")
    assert forwarded == statuses["200"] == len(backend.requests)
    # Caller ids never become labels: callers are the configured ones or "other"...
    assert {v for _, labels in after for k, v in labels if k == "caller"} <= {"orch-a", "other"}
    assert not any(caller in text for caller in ids)
    # ...and 5,000 distinct callers add at most a handful of series (a mode transition or a
    # refusal reason may appear; a series per caller would be thousands).
    assert len(after - before) <= 20, sorted(after - before)


# --- request bodies that would hold an upstream slot ------------------------------------------
@pytest.fixture
async def strict_body(backend: EchoBackend) -> AsyncIterator[Server]:
    config = sluice_config(
        backend.url, listen=LIMITS, upstream={"url": backend.url, "read_timeout": "300ms"}
    )
    async with running_sluice(config) as server:
        yield server


async def test_broken_chunk_inside_a_body_is_400_and_frees_the_slot(
    strict_body: Server, backend: EchoBackend
) -> None:
    # Without the guard the parse error waits behind the request whose body it broke, and
    # that request waits for body bytes that can never come: a slot held forever.
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_body.proxy_port)
    try:
        writer.write(
            b"POST /echo/broken HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        await wait_for(lambda: strict_body.sluice.in_flight == 1)
        writer.write(b"zz\r\nnot a chunk\r\n0\r\n\r\n")
        reply = await asyncio.wait_for(read_reply(reader), 10)
        assert await read_to_close(reader) == b""
    finally:
        writer.close()
    assert_bad_request(reply, 400)
    await wait_for(lambda: strict_body.sluice.in_flight == 0)
    assert "/echo/broken" not in [r["path_qs"] for r in backend.requests]
    assert sample(strict_body, "sluice_bad_input_total", kind="malformed") == 1


async def test_request_body_stalling_past_the_read_timeout_is_408(
    strict_body: Server, backend: EchoBackend
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_body.proxy_port)
    try:
        writer.write(b"POST /echo/stalled HTTP/1.1\r\nHost: s\r\nContent-Length: 100\r\n\r\nhalf")
        # ...and nothing more: the upstream waits for the rest, the client never sends it.
        reply = await asyncio.wait_for(read_reply(reader), 10)
        assert await read_to_close(reader) == b""
    finally:
        writer.close()
    assert reply.status == 408
    assert reply.headers["x-sluice-reason"] == "bad-request"
    await wait_for(lambda: strict_body.sluice.in_flight == 0)
    assert "/echo/stalled" not in [r["path_qs"] for r in backend.requests]


async def test_client_that_stops_reading_a_large_response_frees_the_slot(
    strict_body: Server, backend: EchoBackend
) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", strict_body.proxy_port)
    try:
        writer.write(b"GET /big/50000000 HTTP/1.1\r\nHost: s\r\n\r\n")
        await wait_for(lambda: strict_body.sluice.in_flight == 1)
        # Never read: the socket buffers fill, the proxy's writes block... and time out.
        await wait_for(lambda: strict_body.sluice.in_flight == 0, timeout=10)
    finally:
        writer.close()
