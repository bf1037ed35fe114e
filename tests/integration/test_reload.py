"""Reloads that need a restart are refused and the old config keeps running; every reload is
counted by its result in `sluice_config_reloads_total{result}` (README, Configuration: "the
caller list and `modes.protection` on/off need a restart; a reload that changes them is refused
with a message naming them").

In-process: a running Sluice whose config file is written by the test, reloaded through the
same `Server.reload` that SIGHUP and `POST /reload` call.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.admission.gate import AdmissionGate
from proxy.admission.passthrough import PassThroughGate
from proxy.config import load_config
from proxy.edge.lifecycle import Server
from tests.support import EchoBackend, running_backend, running_sluice

RESULTS = ("ok", "invalid", "restart-required")


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with running_backend() as b:
        yield b


def base_data(upstream: str, protection: str = "on") -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"url": upstream, "read_timeout": "5s", "client": "lean"},
        "admin": {"host": "127.0.0.1", "port": 0, "token_env": "SLUICE_TEST_TOKEN"},
        "lifecycle": {"drain_timeout": "2s", "drain_grace": "0s", "raise_nofile": False},
        "modes": {"protection": protection},
        "callers": {
            "known": [{"name": "orch-a", "cap": 8}, {"name": "orch-b"}],
            "fair_buckets": 8,
        },
    }


def write(path: Path, data: dict[str, Any] | str) -> None:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))


def reloads(server: Server) -> dict[str, float]:
    """`sluice_config_reloads_total` by result, as /metrics would show it."""
    registry = server.sluice.metrics.registry
    out = {}
    for result in RESULTS:
        value = registry.get_sample_value("sluice_config_reloads_total", {"result": result})
        out[result] = 0.0 if value is None else value
    return out


async def served_by_old_backend(server: Server) -> bool:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{server.proxy_port}/echo/still-here") as r,
    ):
        return r.status == 200 and r.headers.get("x-sluice-reason") is None


Change = Callable[[dict[str, Any]], None]


def _set(section: str, key: str, value: Any) -> Change:
    def change(data: dict[str, Any]) -> None:
        data[section][key] = value

    return change


def _rename_caller(data: dict[str, Any]) -> None:
    data["callers"]["known"][1]["name"] = "orch-c"


def _add_caller(data: dict[str, Any]) -> None:
    data["callers"]["known"].append({"name": "orch-c"})


# (id, starting protection, the change, a field name the refusal must name)
REFUSED: list[tuple[str, str, Change, str]] = [
    ("protection-on-to-off", "on", _set("modes", "protection", "off"), "modes.protection"),
    (
        "protection-dry-run-to-off",
        "dry-run",
        _set("modes", "protection", "off"),
        "modes.protection",
    ),
    ("protection-off-to-on", "off", _set("modes", "protection", "on"), "modes.protection"),
    ("caller-renamed", "on", _rename_caller, "callers.known"),
    ("caller-added", "on", _add_caller, "callers.known"),
    ("fair-buckets", "on", _set("callers", "fair_buckets", 16), "fair_buckets"),
    ("upstream-url", "on", _set("upstream", "url", "http://127.0.0.1:9"), "upstream.url"),
    ("upstream-client", "on", _set("upstream", "client", "aiohttp"), "upstream.client"),
    ("listen-port", "on", _set("listen", "port", 1), "listen.port"),
]


@pytest.mark.parametrize(
    ("protection", "change", "field"),
    [pytest.param(p, c, f, id=i) for i, p, c, f in REFUSED],
)
async def test_a_reload_that_needs_a_restart_is_refused_and_the_old_config_keeps_running(
    backend: EchoBackend, tmp_path: Path, protection: str, change: Change, field: str
) -> None:
    path = tmp_path / "sluice.yaml"
    data = base_data(backend.url, protection)
    write(path, data)
    async with running_sluice(load_config(path)) as server:
        server.config_path = path
        old_config, old_gate = server.sluice.snapshot.config, server.sluice.gate
        new = copy.deepcopy(data)
        change(new)
        write(path, new)

        result = await server.reload()

        assert result["ok"] is False
        assert len(result["errors"]) == 1 and field in result["errors"][0]
        assert "restart" in result["errors"][0]
        snap = server.sluice.snapshot
        assert snap.config is old_config and snap.generation == 1
        assert server.sluice.gate is old_gate
        assert server.sluice.status()["config_generation"] == 1
        assert reloads(server) == {"ok": 0, "invalid": 0, "restart-required": 1}
        assert await served_by_old_backend(server)  # the old upstream, still forwarded to


# Changes a reload may apply: the same sections, short of what needs a restart.
ACCEPTED: list[tuple[str, str, Change]] = [
    ("protection-on-to-dry-run", "on", _set("modes", "protection", "dry-run")),
    ("protection-dry-run-to-on", "dry-run", _set("modes", "protection", "on")),
    (
        "caller-cap",
        "on",
        lambda d: d["callers"]["known"][0].update(cap=2, weight=3),
    ),
    ("upstream-read-timeout", "on", _set("upstream", "read_timeout", "7s")),
]


@pytest.mark.parametrize(
    ("protection", "change"), [pytest.param(p, c, id=i) for i, p, c in ACCEPTED]
)
async def test_a_reload_within_the_restart_free_fields_is_applied_and_counted_ok(
    backend: EchoBackend, tmp_path: Path, protection: str, change: Change
) -> None:
    path = tmp_path / "sluice.yaml"
    data = base_data(backend.url, protection)
    write(path, data)
    async with running_sluice(load_config(path)) as server:
        server.config_path = path
        new = copy.deepcopy(data)
        change(new)
        write(path, new)

        assert await server.reload() == {"ok": True, "generation": 2}

        assert server.sluice.snapshot.config == load_config(path)
        assert server.sluice.snapshot.generation == 2
        assert reloads(server) == {"ok": 1, "invalid": 0, "restart-required": 0}
        assert await served_by_old_backend(server)


async def test_reloads_are_counted_by_result(backend: EchoBackend, tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    data = base_data(backend.url)
    write(path, data)
    async with running_sluice(load_config(path)) as server:
        server.config_path = path
        gate = server.sluice.gate
        assert isinstance(gate, AdmissionGate)

        write(path, "upstream:\n  url: http://127.0.0.1:9\nlisten:\n  bogus_key: 1\n")
        bad = await server.reload()
        assert bad["ok"] is False and any("listen.bogus_key" in e for e in bad["errors"])
        assert server.sluice.snapshot.generation == 1
        assert reloads(server) == {"ok": 0, "invalid": 1, "restart-required": 0}

        refused = copy.deepcopy(data)
        refused["callers"]["fair_buckets"] = 4
        write(path, refused)
        assert (await server.reload())["ok"] is False
        assert reloads(server) == {"ok": 0, "invalid": 1, "restart-required": 1}

        good = copy.deepcopy(data)
        good["limiter"] = {"ceiling": 500}
        write(path, good)
        assert await server.reload() == {"ok": True, "generation": 2}
        assert gate.config.limiter.ceiling == 500  # the running gate got the new config
        write(path, data)
        assert await server.reload() == {"ok": True, "generation": 3}
        assert reloads(server) == {"ok": 2, "invalid": 1, "restart-required": 1}
        assert server.sluice.gate is gate and not isinstance(gate, PassThroughGate)
