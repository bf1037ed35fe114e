"""The minimal forwarder of issue 7: the CPU-per-request floor for an aiohttp + uvloop proxy.

    python -m loadtest.minimal_forwarder --port 8090 --upstream http://127.0.0.1:8081

Written exactly as the issue specifies, and nothing more: an aiohttp server with the access
log off; one `ClientSession` (`TCPConnector(limit=256)`, `DummyCookieJar`,
`auto_decompress=False`, `skip_auto_headers` for User-Agent/Accept/Accept-Encoding);
hop-by-hop headers stripped both ways; the body read whole; a `web.Response` returned; uvloop.
No admission, no metrics, no error mapping: `loadtest/bench.py` prices Sluice against it.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import ClientSession, DummyCookieJar, TCPConnector, web
from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1 plus the de-facto ones.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Framing that aiohttp sets itself from the body it is given (a copy would be duplicated).
_FRAMING = HOP_BY_HOP | {"content-length"}


def _strip(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in _FRAMING:
            out.add(name, value)
    return out


def build_app(upstream: str) -> web.Application:
    """The forwarder: every path and method goes to `upstream`, answers come back whole."""
    app = web.Application()
    base = upstream.rstrip("/")

    async def start_session(app: web.Application) -> None:
        app["session"] = ClientSession(
            connector=TCPConnector(limit=256),
            cookie_jar=DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def close_session(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        session: ClientSession = request.app["session"]
        body = await request.read()
        async with session.request(
            request.method,
            base + request.raw_path,
            headers=_strip(request.headers),
            data=body or None,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            return web.Response(
                status=resp.status, reason=resp.reason, body=data, headers=_strip(resp.headers)
            )

    app.on_startup.append(start_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    """Serve until the process is killed (SIGTERM's default action ends it)."""
    runner = web.AppRunner(build_app(upstream), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
