"""Requests answered at their client's deadline while the backend still works on them.

A backend that does not cancel work when its caller disconnects (the loadtest simulator, many
real servers) still holds a request Sluice gave up on. If its slot were freed at the deadline,
the next waiter would be sent at once and the backend would hold more than the limit: its
queue fills with abandoned work that in-flight never shows. Here the backend holds every
request longer than the clients' deadlines; whatever the clients do, it must never hold more
than the limit, and each slot comes back with the backend's late answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.admission.gate import AdmissionGate
from proxy.config import Config
from tests.support import running_sluice, sluice_config, wait_for

LIMIT = 4
SERVICE = 0.4  # seconds the backend holds each request
DEADLINE_MS = 150  # what each client allows: well under the service time


class HoldingBackend:
    """Holds each request SERVICE seconds, not cancelled when its caller leaves (aiohttp's
    handler cancellation is off); counts the requests it holds at once."""

    def __init__(self) -> None:
        self.holding = 0
        self.peak = 0
        self.served = 0
        self.app = web.Application()
        self.app.router.add_get("/token", self.token)
        self.app.router.add_get("/healthz", self.healthz)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        self.port = 0

    async def token(self, request: web.Request) -> web.Response:
        self.holding += 1
        self.peak = max(self.peak, self.holding)
        try:
            await asyncio.sleep(SERVICE)
        finally:
            self.holding -= 1
            self.served += 1
        return web.json_response({"token": "t"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


@pytest.fixture
async def backend() -> AsyncIterator[HoldingBackend]:
    b = HoldingBackend()
    await b.runner.setup()
    site = web.TCPSite(b.runner, "127.0.0.1", 0)
    await site.start()
    b.port = int(b.runner.addresses[0][1])
    try:
        yield b
    finally:
        await b.runner.cleanup()


def limited_config(port: int, client_kind: str = "lean") -> Config:
    """Sluice in front of the holding backend, protection on, the limit fixed at LIMIT."""
    url = f"http://127.0.0.1:{port}"
    return sluice_config(
        url,
        upstream={"url": url, "client": client_kind, "read_timeout": "3s"},
        limiter={"initial": LIMIT, "floor": LIMIT, "ceiling": LIMIT},
        modes={"protection": "on", "startup_window": "0s"},
    )


async def ask_with_deadline(session: aiohttp.ClientSession, target: str) -> int:
    """One request that tells Sluice its client allows DEADLINE_MS; its status."""
    headers = {"x-request-timeout-ms": str(DEADLINE_MS)}
    async with session.get(target, headers=headers) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize("client_kind", ["lean", "aiohttp"])
async def test_the_backend_never_holds_more_than_the_limit(
    backend: HoldingBackend, client_kind: str
) -> None:
    config = limited_config(backend.port, client_kind)
    async with (
        running_sluice(config) as server,
        aiohttp.ClientSession() as session,
    ):
        gate = server.sluice.gate
        assert isinstance(gate, AdmissionGate)
        target = f"http://127.0.0.1:{server.proxy_port}/token"
        statuses: list[int] = []
        for _ in range(4):  # waves, each longer than a deadline and shorter than a service
            waves = (ask_with_deadline(session, target) for _ in range(4 * LIMIT))
            statuses += await asyncio.gather(*waves)
            await asyncio.sleep(0.1)
        assert 200 not in statuses  # no client waits long enough for an answer
        assert backend.peak <= LIMIT, f"the backend held {backend.peak} requests at once"
        # Every slot comes back with the backend's late answer, which is a latency sample.
        await wait_for(lambda: gate.in_flight == 0 and backend.holding == 0, timeout=10)
        assert backend.served >= LIMIT
        assert gate.estimates.recent.median(gate.now()) >= SERVICE * 0.9


async def test_clients_that_leave_do_not_free_what_the_backend_holds(
    backend: HoldingBackend,
) -> None:
    # No deadline header: the clients just leave (aiohttp's timeout), and Sluice's handler is
    # cancelled with them. (The lean client only: aiohttp's cuts the exchange with its caller.)
    config = limited_config(backend.port)
    async with running_sluice(config) as server, aiohttp.ClientSession() as session:
        gate = server.sluice.gate
        assert isinstance(gate, AdmissionGate)
        target = f"http://127.0.0.1:{server.proxy_port}/token"
        leave = aiohttp.ClientTimeout(total=DEADLINE_MS / 1000)

        async def one() -> None:
            with contextlib.suppress(TimeoutError):
                async with session.get(target, timeout=leave) as resp:
                    await resp.read()

        for _ in range(4):
            await asyncio.gather(*(one() for _ in range(4 * LIMIT)))
            await asyncio.sleep(0.1)
        assert backend.peak <= LIMIT, f"the backend held {backend.peak} requests at once"
        await wait_for(lambda: gate.in_flight == 0 and backend.holding == 0, timeout=10)


async def test_with_protection_off_nothing_is_held_past_the_deadline(
    backend: HoldingBackend,
) -> None:
    # Protection off is a plain proxy (the unprotected arm of the replay): no limit to keep
    # honest, so the exchange is cut with its client's deadline and no late answer is awaited.
    url = f"http://127.0.0.1:{backend.port}"
    config = sluice_config(
        url,
        upstream={"url": url, "client": "lean", "read_timeout": "3s"},
        modes={"protection": "off"},
    )
    async with running_sluice(config) as server, aiohttp.ClientSession() as session:
        forwarder = server.sluice.forwarder
        assert forwarder is not None
        target = f"http://127.0.0.1:{server.proxy_port}/token"
        statuses = await asyncio.gather(
            *(ask_with_deadline(session, target) for _ in range(4 * LIMIT))
        )
        assert set(statuses) == {504}
        assert backend.holding > 0  # the backend still works on them (SERVICE > deadline)
        assert not forwarder.lingering  # ... and Sluice awaits none of their answers
        assert backend.peak > LIMIT  # nothing limits a plain proxy
