"""The fleet replay's balancer (issue 18), for real: Debian's HAProxy, written and started by the
harness (loadtest.arm_fleet), in front of two Sluice sidecars, each in front of its own
simulated backend, on loopback.

Requests reach both sidecars, and each sidecar tells clients apart by the `X-Forwarded-For`
HAProxy adds (its peer is always HAProxy on 127.0.0.1): identical requests without a caller
header from different client addresses failing in turn are never taken for one client's
retries, while one address repeating the same failing request is. Without the balancer's
header believed (`trust.sources` without 127.0.0.1) every client would be HAProxy and the first
check fails.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from loadtest.arm_children import (
    Backend,
    BackendArgs,
    get_json,
    launch_backend,
    post_admin,
    start_proxies,
    wait_ready,
)
from loadtest.arm_fleet import Front, scrape_metrics, servers_of, start_front
from loadtest.balancer import HAPROXY_MISSING, SIDECAR_TRUST
from loadtest.httpclient import Pool
from loadtest.lb_analysis import sidecar_counters
from loadtest.procs import ProcessGroup
from loadtest.scenario import SCENARIO_DIR, load_scenario, sluice_config_path

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None,
    reason=f"NOT RUN: {HAPROXY_MISSING}; CI installs it, so this only skips on a dev machine",
)

PATH = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=fleet"
LIFETIME = 60.0  # s any child may live


class Rig:
    """Two backends, a sidecar in front of each, HAProxy in front of both."""

    def __init__(self, backends: dict[str, Backend], admins: dict[str, Pool], front: Front):
        self.backends = backends
        self.admins = admins
        self.front = front

    async def get(self, source: str, path: str) -> int:
        """One request from client address `source` through the balancer, no caller header."""
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://127.0.0.1:{self.front.port}{path}"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
                return resp.status

    async def counters(self) -> dict[str, dict[str, float]]:
        """Each sidecar's retries recognised, by signal."""
        out = {}
        for name, admin in self.admins.items():
            text = await scrape_metrics(admin)
            assert text is not None, f"sidecar {name} has no /metrics"
            out[name] = sidecar_counters(text)["recognised"]
        return out


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    sc, scenario_file = load_scenario(str(SCENARIO_DIR / "reopen.yaml"))
    group = ProcessGroup(tmp_path / "logs")
    pools: list[Pool] = []

    def pool(port: int) -> Pool:
        p = Pool("127.0.0.1", port)
        pools.append(p)
        return p

    try:
        backends = {
            name: launch_backend(group, sc, "t", BackendArgs(name, 5, 100, i), LIFETIME, pool)
            for i, name in enumerate(("east-0", "east-1"))
        }
        for b in backends.values():
            await wait_ready(b.child, b.admin, "/ready")
        proxies = await start_proxies(
            group,
            "t",
            "off",  # passthrough: every request reaches the backend, every failure is noted
            sluice_config_path(scenario_file),
            tmp_path / "configs",
            backends,
            pool,
            region_of={name: "east" for name in backends},
            overrides={"trust": SIDECAR_TRUST},
        )
        front = await start_front(
            group, "t", tmp_path / "configs", servers_of(backends, proxies), "roundrobin", 1.0,
            LIFETIME,
        )  # fmt: skip
        yield Rig(backends, {n: p.admin for n, p in proxies.items()}, front)
    finally:
        for p in pools:
            p.close()
        group.stop_all()


async def test_requests_reach_both_sidecars_which_tell_clients_apart_by_xff(rig: Rig) -> None:
    # HAProxy runs under coreutils `timeout` (its lifetime bound), leading its process group.
    assert rig.front.child.argv[0] == "timeout" and rig.front.child.alive()
    for b in rig.backends.values():  # every request fails: each failure is remembered
        await post_admin(b.admin, "/admin/outage", {"seconds": LIFETIME})
    # Eight client machines send the same request once each; none is a retry of another.
    statuses = [await rig.get(f"127.1.0.{i}", PATH + "-many") for i in range(1, 9)]
    assert statuses == [500] * 8  # the backends' own failure, passed through
    recognised = await rig.counters()
    assert sum(sum(c.values()) for c in recognised.values()) == 0, recognised
    # One machine sends its request four times: on whichever sidecar it lands twice, the
    # repeat is its retry (at least one sidecar sees it twice of four, with two sidecars).
    for _ in range(4):
        assert await rig.get("127.1.0.200", PATH + "-one") == 500
    recognised = await rig.counters()
    assert sum(c.get("fingerprint", 0) for c in recognised.values()) >= 1, recognised
    # Both backends were reached through their sidecars.
    for name, b in rig.backends.items():
        stats = await get_json(b.admin, "/stats?raw=0", timeout=5.0)
        assert stats is not None
        assert stats["counts"]["arrivals"] > 0, (name, stats["counts"])
