"""What the connection guard (`guard.py`) refuses, decided without I/O: which kind of bad input
an aiohttp parse error is (and its status: 414, 431 or 400), and whether a parsed request may
be proxied at all (`screen`).

llhttp (aiohttp's C parser) already refuses `Content-Length` with `Transfer-Encoding`,
duplicate `Content-Length` (even equal ones), unknown or non-final transfer codings, obs-fold,
and CR, LF or NUL inside a header value, before a request exists. `screen` refuses what parses
but must not be proxied: HTTP versions other than 1.0 and 1.1, `Transfer-Encoding` in an
HTTP/1.0 request (RFC 9112 §6.1: the framing is faulty), `CONNECT`, WebSocket upgrades, and
targets that are neither origin- nor absolute-form.
"""

from __future__ import annotations

import re

from aiohttp.http_exceptions import LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion10, HttpVersion11

from ..config import ListenConfig

# Kinds of refused input (a closed set: they are metric labels).
BAD_INPUT_KINDS: tuple[str, ...] = (
    "malformed",  # not HTTP/1.x, bad request line, bad header syntax, missing Host...
    "uri-too-long",  # 414
    "headers-too-large",  # 431: one field over max_field_size, or more than max_headers
    "framing",  # Content-Length / Transfer-Encoding conflicts (request smuggling attempts)
    "bad-header-value",  # CR, LF, NUL or another control character inside a header value
    "unsupported",  # CONNECT, WebSocket upgrade
    "header-timeout",  # request line + headers not complete within header_read_timeout
)


def classify_parse_error(exc: BaseException, listen: ListenConfig) -> tuple[str, int]:
    """(kind, status) for an aiohttp parse error.

    llhttp reports an over-long line from the callback that saw it, and the Cython traceback
    names that callback: `cb_on_url` is the request target (414), `cb_on_header_*` a header
    (431). The pure-Python parser puts the start of the line in the exception instead: a
    method and a space is the request line, a name and a colon a header. Failing both, the limit
    named in the exception decides when the two limits differ; when they are equal there is
    no telling, and the answer is 400.
    """
    message = getattr(exc, "message", "") or str(exc)
    if isinstance(exc, LineTooLong):
        where = _raised_in(exc)
        if "cb_on_url" in where:
            return "uri-too-long", 414
        if "cb_on_header_field" in where or "cb_on_header_value" in where:
            return "headers-too-large", 431
        if "parse_headers" in where:
            return "headers-too-large", 431
        # The pure-Python parser reports the whole line: `GET /...` or `Name: value`.
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytes | bytearray):
            if _REQUEST_LINE.match(line):
                return "uri-too-long", 414
            if _HEADER_LINE.match(line):
                return "headers-too-large", 431
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == listen.max_line_size != listen.max_field_size:
            return "uri-too-long", 414
        if limit == listen.max_field_size != listen.max_line_size:
            return "headers-too-large", 431
        return "headers-too-large", 400
    if "Too many headers" in message:
        return "headers-too-large", 431
    if "Content-Length" in message or "Transfer-Encoding" in message:
        return "framing", 400
    if (
        "header value char" in message
        or "after header value" in message
        or ("Invalid HTTP header" in message)
    ):
        return "bad-header-value", 400
    return "malformed", 400


_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(_TOKEN + rb" ")
_HEADER_LINE = re.compile(_TOKEN + rb"(:|\.\.\.$)")  # a name, or one cut off at 100 bytes


def _raised_in(exc: BaseException) -> str:
    names = []
    tb = exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return " ".join(names)


def screen(message: RawRequestMessage) -> RawRequestMessage | tuple[str, str]:
    """A parsed request as it may be proxied, or (kind, detail) when it must be refused.

    Refused: HTTP versions other than 1.0 and 1.1 (llhttp lets `HTTP/0.9` and `HTTP/2.0`
    request lines through), `Transfer-Encoding` in HTTP/1.0, `CONNECT`, WebSocket upgrades and
    asterisk- or authority-form targets. An absolute-form target (`GET http://host/p?q`) is
    rewritten to origin-form (`/p?q`), which is what the upstream must see.
    """
    version = message.version
    if version != HttpVersion11 and version != HttpVersion10:
        return "malformed", f"HTTP version {version.major}.{version.minor} is not served"
    if message.method == "CONNECT":
        return "unsupported", "CONNECT is not proxied"
    if version == HttpVersion10 and "transfer-encoding" in message.headers:
        return "framing", "Transfer-Encoding in an HTTP/1.0 request"
    if message.upgrade and message.headers.get("upgrade", "").strip().lower() == "websocket":
        return "unsupported", "WebSocket upgrades are not proxied"
    target = message.path
    if not target.startswith("/"):
        origin = _origin_form(target)
        if origin is None:
            return "unsupported", "only origin-form and absolute-form targets are proxied"
        message = message._replace(path=origin)
    return message


def _origin_form(target: str) -> str | None:
    """`http://host:port/p?q` → `/p?q`; None for anything that is not absolute-form."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    cuts = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    path = rest[min(cuts) :] if cuts else ""
    return path if path.startswith("/") else "/" + path
