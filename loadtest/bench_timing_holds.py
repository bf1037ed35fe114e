"""bench_timing's `holds` section: Sluice in this process, its limit held full; a held retry's
hold and its client's return against the booked slot, and a shed request's wait plus
Retry-After (the timings tests/integration/test_admission.py no longer asserts)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from proxy.config import load_config_data
from proxy.edge.lifecycle import Server, start_server

from .bench_timing_common import serve, spread


# --- holds ------------------------------------------------------------------------------------
async def bench_holds(rounds: int = 10) -> None:
    """Sluice in this process with its limit held full: a held retry, then a shed request."""
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="held")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/hold", hold)
    app.router.add_get("/echo/{tail:.*}", echo)
    backend, port = await serve(app)
    try:
        await _at_the_limit(port, release, functools.partial(_retries, rounds=rounds), {})
        await _at_the_limit(port, release, _shed, {"normal_max_wait": "200ms"})
    finally:
        await backend.cleanup()


def _holds_config(port: int, queue: dict[str, Any]) -> Any:
    """Sluice with a limit of 2 in front of 127.0.0.1:`port`, no retry budget, `queue`."""
    return load_config_data(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {"url": f"http://127.0.0.1:{port}", "read_timeout": "30s"},
            "admin": {"host": "127.0.0.1", "port": 0},
            "lifecycle": {"drain_timeout": "2s", "raise_nofile": False},
            "logging": {"level": "warning"},
            "modes": {"protection": "on", "startup_window": "0s"},
            "callers": {"known": [{"name": "orch"}]},
            "limiter": {"initial": 2, "floor": 1, "ceiling": 2},
            "retry_budget": {"floor_per_s": 0, "global_floor_per_s": 0},
            "queue": queue,
        }
    )


async def _at_the_limit(
    port: int,
    release: asyncio.Event,
    body: Callable[[Server, aiohttp.ClientSession], Awaitable[None]],
    queue: dict[str, Any],
) -> None:
    """Run `body` against a Sluice whose limit is held full by two requests the backend
    holds until `release`."""
    server = await start_server(_holds_config(port, queue))
    base = f"http://127.0.0.1:{server.proxy_port}"
    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(session.get(f"{base}/hold")) for _ in range(2)]
        try:
            for _ in range(2000):  # the limit full: both held at the backend
                if server.sluice.gate.status()["in_flight"] == 2:
                    break
                await asyncio.sleep(0.01)
            await body(server, session)
        finally:
            release.set()
            for resp in await asyncio.gather(*held, return_exceptions=True):
                if isinstance(resp, aiohttp.ClientResponse):
                    resp.release()
            release.clear()
    await server.shutdown()


async def _retries(server: Server, session: aiohttp.ClientSession, rounds: int) -> None:
    """A retry over its budget, `rounds` times: how long it is held, and how far its return
    (answer + Retry-After) lands from the slot booked for it."""
    snap = server.sluice.snapshot
    orch = snap.classifier.caller_names().index("orch")
    pacer = server.sluice.gate.pacer  # type: ignore[attr-defined]
    holds, errors = [], []
    headers = {"x-caller-id": "orch", "x-retry-attempt": "1", "x-request-timeout-ms": "600"}
    for i in range(rounds):
        sent = time.monotonic()
        async with session.get(
            f"http://127.0.0.1:{server.proxy_port}/echo/{i}", headers=headers
        ) as r:
            await r.read()
            received = time.monotonic()
            retry_after = int(r.headers["retry-after-ms"]) / 1000
        booked = pacer.bookings[orch][-1].start + snap.config.shedding.slot_grace
        holds.append(received - sent)
        errors.append(abs(received + retry_after - booked))
    print(
        f"holds      a retry over its budget, held then refused ({rounds}x): held "
        f"{spread(holds)}; its return (answer + Retry-After) off the booked slot by "
        f"{spread(errors)}"
    )


async def _shed(server: Server, session: aiohttp.ClientSession) -> None:
    """A first try that waits at the limit, then is shed (3 times): its wait, its return."""
    waits, returns = [], []
    for i in range(3):
        sent = time.monotonic()
        headers = {"x-retry-attempt": "0"}
        async with session.get(
            f"http://127.0.0.1:{server.proxy_port}/echo/late{i}", headers=headers
        ) as r:
            await r.read()
            elapsed = time.monotonic() - sent
            retry_after = int(r.headers.get("retry-after-ms", "0")) / 1000
        waits.append(elapsed)
        returns.append(elapsed + retry_after)
    print(
        f"           waited at the limit (normal_max_wait 200 ms), then shed (3x): answered "
        f"after {spread(waits)}; back after {spread(returns)} (the refusal + at least "
        "shedding.retry_after_min, 100 ms)"
    )
