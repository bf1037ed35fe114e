"""The simulated backend's HTTP face: the token endpoint (any path) and `/healthz` on the main
listener; `/ready`, `/stats`, `POST /admin/outage` and `POST /admin/workers` on the admin one."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from .backend_sim import Simulator

_JSON = {"Content-Type": "application/json; charset=utf-8"}


def _error(status: int, reason: str, description: str) -> web.Response:
    body = orjson.dumps({"error": "temporarily_unavailable", "error_description": description})
    return web.Response(status=status, body=body, headers={**_JSON, "x-backend-reason": reason})


class _Handlers:
    """The backend's HTTP handlers over one simulator (see the module docstring)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def token(self, request: web.Request) -> web.Response:
        """Any path of the main listener: a token after the simulated service, or a fast
        500 (outage) / 503 (queue full)."""
        sim = self.sim
        foreign = "x-origin-region" in request.headers
        result = sim.admit(foreign)
        if isinstance(result, str):
            if result == "outage":
                return _error(500, "outage", "the token service is broken")
            return _error(503, "queue-full", "the token service is overloaded")
        # Not cancelled when the client leaves (aiohttp's handler_cancellation is off), and
        # shielded so a server shutdown cannot lose the bookkeeping either.
        done = await asyncio.shield(result)
        transport = request.transport
        gone = transport is None or transport.is_closing()
        rid = request.headers.get("x-request-id", "")
        sim.record_completion(done, rid, foreign, gone)
        q = request.query
        now = int(time.time())
        body = orjson.dumps(
            {
                "access_token": sim.token,
                "client_id": q.get("client_id", "00000000-0000-0000-0000-000000000000"),
                "expires_in": "86399",
                "expires_on": str(now + 86399),
                "ext_expires_in": "86399",
                "not_before": str(now),
                "resource": q.get("resource", "https://management.azure.com/"),
                "token_type": "Bearer",
            }
        )
        return web.Response(body=body, headers=_JSON)

    async def healthz(self, request: web.Request) -> web.Response:
        """200, or the outage's fast 500."""
        if not self.sim.health():
            return _error(500, "outage", "the token service is broken")
        return web.Response(body=b'{"status":"ok"}', headers=_JSON)

    async def ready(self, request: web.Request) -> web.Response:
        """The admin listener is up."""
        return web.Response(body=b'{"status":"ready"}', headers=_JSON)

    async def stats(self, request: web.Request) -> web.Response:
        """Counters, peaks and the timeline (with the raw records unless `?raw=0`)."""
        raw = request.query.get("raw", "1") not in ("0", "false", "no")
        return web.Response(body=orjson.dumps(self.sim.stats(raw)), headers=_JSON)

    async def outage(self, request: web.Request) -> web.Response:
        """POST {"seconds": S}: every request fails fast for S seconds."""
        body = orjson.loads(await request.read() or b"{}")
        seconds = float(body.get("seconds", 5.0))
        if not 0 < seconds <= 3600:
            return web.Response(status=400, text="seconds must be in (0, 3600]")
        self.sim.set_outage(seconds)
        return web.Response(
            body=orjson.dumps({"outage_until": self.sim.outage_until, "kind": "fast-500"}),
            headers=_JSON,
        )

    async def workers(self, request: web.Request) -> web.Response:
        """POST {"workers": W, "at": T}: W workers from the monotonic instant T (default now)."""
        body = orjson.loads(await request.read() or b"{}")
        count = body.get("workers")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000:
            return web.Response(status=400, text="workers must be an integer in [1, 100000]")
        at = body.get("at")
        delay = 0.0
        if at is not None:
            if not isinstance(at, int | float) or isinstance(at, bool):
                return web.Response(status=400, text="at must be a monotonic instant (s)")
            delay = max(0.0, float(at) - time.monotonic())
        asyncio.get_running_loop().call_later(delay, self.sim.set_workers, count)
        return web.Response(
            body=orjson.dumps({"workers": count, "in_s": round(delay, 4)}), headers=_JSON
        )


def build_apps(sim: Simulator) -> tuple[web.Application, web.Application]:
    """The main (token) application and the admin application."""
    h = _Handlers(sim)
    main = web.Application()
    main.router.add_get("/healthz", h.healthz)
    main.router.add_route("*", "/{tail:.*}", h.token)
    admin = web.Application()
    admin.router.add_get("/ready", h.ready)
    admin.router.add_get("/stats", h.stats)
    admin.router.add_post("/admin/outage", h.outage)
    admin.router.add_post("/admin/workers", h.workers)
    return main, admin
