"""The guard's pure parts: which status a parse error earns (with aiohttp's C parser and its
pure-Python one), which parsed requests are refused or rewritten, and the invalid-header
counter feeding its metric.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy, RawRequestMessage

from proxy.config import ListenConfig
from proxy.edge.guard import CountingInvalidHeaders, classify_parse_error, screen
from proxy.ops.metrics import Metrics

EQUAL = ListenConfig(max_line_size=1024, max_field_size=1024, max_headers=20)
GET = b"GET / HTTP/1.1\r\nHost: s\r\n"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def parse(parser_cls: Any, loop: asyncio.AbstractEventLoop, data: bytes) -> Any:
    parser = parser_cls(mock.Mock(), loop, 2**16, max_line_size=1024, max_field_size=1024,
                        max_headers=20)  # fmt: skip
    try:
        return parser.feed_data(data)[0]
    except Exception as exc:
        return exc


@pytest.mark.parametrize("parser_cls", [HttpRequestParserC, HttpRequestParserPy])
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET /" + b"u" * 1100 + b" HTTP/1.1\r\nHost: s\r\n\r\n", ("uri-too-long", 414)),
        (GET + b"X-A: /" + b"v" * 1100 + b"\r\n\r\n", ("headers-too-large", 431)),
        (GET + b"X-A: GET /" + b"v" * 1100 + b"\r\n\r\n", ("headers-too-large", 431)),
        (GET + b"X-" + b"n" * 1100 + b": 1\r\n\r\n", ("headers-too-large", 431)),
        (
            GET + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n",
            ("headers-too-large", 431),
        ),
        (GET + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", ("framing", 400)),
        (GET + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", ("framing", 400)),
        (GET + b"X-A: a\x00b\r\n\r\n", ("bad-header-value", 400)),
        (GET + b"X-A: a\rb\r\n\r\n", ("bad-header-value", 400)),
        (b"NOT HTTP\r\n\r\n", ("malformed", 400)),
    ],
)
def test_parse_errors_get_their_status(
    loop: asyncio.AbstractEventLoop, parser_cls: Any, data: bytes, expected: tuple[str, int]
) -> None:
    exc = parse(parser_cls, loop, data)
    assert isinstance(exc, Exception), f"{parser_cls.__name__} accepted {data[:40]!r}"
    assert classify_parse_error(exc, EQUAL) == expected


def test_over_long_line_with_no_clue_falls_back_on_the_limits() -> None:
    from aiohttp.http_exceptions import LineTooLong

    differ = ListenConfig(max_line_size=2048, max_field_size=1024)
    assert classify_parse_error(LineTooLong(b"?", 2048), differ) == ("uri-too-long", 414)
    assert classify_parse_error(LineTooLong(b"?", 1024), differ) == ("headers-too-large", 431)
    # equal limits and no other clue: Sluice cannot tell, so the honest answer is 400
    assert classify_parse_error(LineTooLong(b"?", 1024), EQUAL) == ("headers-too-large", 400)


def message(loop: asyncio.AbstractEventLoop, data: bytes) -> RawRequestMessage:
    (msg, _), *_ = parse(HttpRequestParserC, loop, data)
    assert isinstance(msg, RawRequestMessage)
    return msg


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"GET / HTTP/0.9\r\n\r\n", "malformed"),
        (b"GET / HTTP/2.0\r\nHost: s\r\n\r\n", "malformed"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "unsupported"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "framing"),
        (GET + b"Connection: upgrade\r\nUpgrade: WebSocket\r\n\r\n", "unsupported"),
        (b"OPTIONS * HTTP/1.1\r\nHost: s\r\n\r\n", "unsupported"),
    ],
)
def test_requests_that_parse_but_are_not_proxied(
    loop: asyncio.AbstractEventLoop, data: bytes, kind: str
) -> None:
    result = screen(message(loop, data))
    assert isinstance(result, tuple) and not isinstance(result, RawRequestMessage)
    assert result[0] == kind


@pytest.mark.parametrize(
    ("target", "origin"),
    [
        ("http://h/p?q=1", "/p?q=1"),
        ("HTTPS://h:8443", "/"),
        ("http://h?x", "/?x"),
        ("http://user@h/a/b", "/a/b"),
    ],
)
def test_absolute_form_becomes_origin_form(
    loop: asyncio.AbstractEventLoop, target: str, origin: str
) -> None:
    msg = message(loop, f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    out = screen(msg)
    assert isinstance(out, RawRequestMessage)
    assert out.path == origin
    assert out.headers is msg.headers


@pytest.mark.parametrize(
    "data",
    [
        GET + b"\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        GET + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_ordinary_requests_pass_unchanged(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    msg = message(loop, data)
    assert screen(msg) is msg


def test_invalid_header_counter_feeds_the_metric() -> None:
    metrics = Metrics()
    counter = CountingInvalidHeaders(metrics)
    for _ in range(3):
        counter.hit()
    assert counter.count == 3
    assert metrics.registry.get_sample_value("sluice_invalid_headers_total") == 3
