"""A backend 5xx that arrives while the gate is in OUTAGE is answered `503 outage`.

A request admitted in NORMAL is still at the backend when a run of fast 500s switches the gate
to OUTAGE; its own 500 then arrives and the client gets the reason table's `outage` answer
(503, `x-sluice-reason: outage`, Retry-After) instead of the backend's error. The 500s that
arrived before the switch pass through untouched, and a dry-run gate changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.edge.lifecycle import Server
from tests.support import running_sluice, sluice_config, wait_for

BROKEN_STREAK = 3  # modes.outage_min_samples: this many fast 500s in a row mean OUTAGE


class BrokenBackend:
    """Answers 500 to everything (health probes too); `/held` waits for `release` first."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/held", self.held_500)
        self.app.router.add_route("*", "/{tail:.*}", self.fail)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.port = 0

    async def fail(self, request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"backend broke", headers={"x-backend": "1"})

    async def held_500(self, request: web.Request) -> web.Response:
        self.held += 1
        await self.release.wait()
        return web.Response(status=500, body=b"backend broke late", headers={"x-backend": "1"})

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        self.release.set()
        await self.runner.cleanup()


@contextlib.asynccontextmanager
async def broken_sluice(
    protection: str, client: str
) -> AsyncIterator[tuple[Server, BrokenBackend]]:
    backend = BrokenBackend()
    await backend.start()
    config = sluice_config(
        f"http://127.0.0.1:{backend.port}",
        upstream={"client": client},
        modes={
            "protection": protection,
            "outage_min_samples": BROKEN_STREAK,
            "fast_error": "1s",  # a loaded test machine must not make the 500s look slow
        },
    )
    try:
        async with running_sluice(config) as server:
            yield server, backend
    finally:
        await backend.stop()


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("protection", ["on", "dry-run"])
async def test_backend_5xx_in_outage_answered_503_outage(protection: str, client: str) -> None:
    async with (
        broken_sluice(protection, client) as (server, backend),
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{server.proxy_port}"
        headers = {"x-retry-attempt": "0"}
        held = asyncio.create_task(session.get(f"{base}/held", headers=headers))
        await wait_for(lambda: backend.held == 1)
        assert server.sluice.gate.status()["mode"] == "NORMAL"

        for i in range(BROKEN_STREAK):  # before the switch: the backend's 500 passes through
            async with session.get(f"{base}/fail?i={i}", headers=headers) as resp:
                assert resp.status == 500
                assert resp.headers.get("x-backend") == "1"
                assert "x-sluice-reason" not in resp.headers
                assert await resp.read() == b"backend broke"
        assert server.sluice.gate.status()["mode"] == "OUTAGE"

        backend.release.set()
        resp = await asyncio.wait_for(held, 10)
        async with resp:
            body = await resp.read()
            if protection == "dry-run":  # dry run forwards and answers as without Sluice
                assert resp.status == 500
                assert body == b"backend broke late"
                assert "x-sluice-reason" not in resp.headers
                return
            assert resp.status == 503
            assert resp.headers["x-sluice-reason"] == "outage"
            assert "x-backend" not in resp.headers
            assert orjson.loads(body)["reason"] == "outage"
            retry_after = int(resp.headers["Retry-After"])
            retry_after_ms = int(resp.headers["retry-after-ms"])
            limit_s = server.sluice.snapshot.config.shedding.retry_after_max
            assert 1 <= retry_after <= limit_s
            assert 1000 <= retry_after_ms <= limit_s * 1000
            assert resp.headers["x-request-id"]
        registry = server.sluice.metrics.registry
        refused = registry.get_sample_value(
            "sluice_requests_total", {"outcome": "refused", "reason": "outage"}
        )
        assert refused is not None and refused >= 1
