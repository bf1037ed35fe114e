"""`/readyz` turns 503 only while Sluice drains, never because of a mode (DESIGN.md §4, README
Admin API): an orchestrator that took a pod out of rotation in OUTAGE, RECOVERY or SHIELD would
move the storm onto the next pod.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from proxy.edge.lifecycle import Server
from tests.support import free_port, get_json, running_sluice, sluice_config

TOKEN = "readiness-token-0123456789"
BROKEN_STREAK = 3  # modes.outage_min_samples


async def readyz(s: aiohttp.ClientSession, server: Server) -> tuple[int, Any]:
    async with s.get(f"http://127.0.0.1:{server.admin_port}/readyz") as r:
        return r.status, await r.json()


async def mode(s: aiohttp.ClientSession, server: Server) -> str:
    status = await get_json(s, f"http://127.0.0.1:{server.admin_port}/status")
    return str(status["mode"])


async def command(s: aiohttp.ClientSession, server: Server, body: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{server.admin_port}/mode"
    async with s.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200, await r.text()


async def test_readyz_stays_200_in_outage_recovery_and_shield_and_turns_503_only_draining(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_TEST_TOKEN", TOKEN)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every forward fails to connect
    config = sluice_config(
        dead,
        modes={
            "protection": "on",
            "outage_min_samples": BROKEN_STREAK,
            # No automatic move out of a mode while the test looks at it: only the run of
            # broken answers (which needs no dwell) and the operator's commands move it.
            "min_dwell": "60m",
        },
    )
    async with running_sluice(config) as server, aiohttp.ClientSession() as s:
        assert await readyz(s, server) == (200, {"status": "ready"})
        assert await mode(s, server) == "NORMAL"

        # The backend is down: a run of connect failures puts the gate in OUTAGE.
        for i in range(BROKEN_STREAK):
            async with s.get(f"http://127.0.0.1:{server.proxy_port}/echo/{i}") as r:
                assert r.status == 502
                assert r.headers["x-sluice-reason"] == "upstream-connect"
        assert await mode(s, server) == "OUTAGE"
        assert await readyz(s, server) == (200, {"status": "ready"})

        await command(s, server, {"mode": "recovery"})
        assert await mode(s, server) == "RECOVERY"
        assert await readyz(s, server) == (200, {"status": "ready"})

        await command(s, server, {"mode": "shield", "ttl": "10m"})
        assert await mode(s, server) == "SHIELD"
        assert await readyz(s, server) == (200, {"status": "ready"})

        # Draining, and only draining, takes the pod out of rotation.
        await server.sluice.drain()
        assert await readyz(s, server) == (503, {"status": "draining"})
