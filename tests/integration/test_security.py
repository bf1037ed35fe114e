"""Security of the admin listener and of trust: every mutating admin call refuses without the
bearer token and logs the attempt, no secret shows in /status, /metrics or the logs, and the
identity, region and forwarding headers are believed only from configured sources.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import AdminConfig, load_config
from proxy.contracts import Ticket
from proxy.edge.lifecycle import Server
from proxy.logs import JsonFormatter
from tests.support import EchoBackend, running_backend, running_sluice, sluice_config

TOKEN = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with running_backend() as b:
        yield b


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as Sluice writes it (JSON with the `extra=` fields)."""
    fmt = JsonFormatter()
    return "\n".join(fmt.format(r) for r in caplog.records)


def mutating_routes(server: Server) -> list[tuple[str, str]]:
    """(method, path) of every admin route that is not a read: found, not listed by hand."""
    out = []
    for route in server.admin_runner.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method not in ("GET", "HEAD") and path:
            out.append((route.method, path))
    return sorted(out)


@pytest.fixture
async def admin_server(
    backend: EchoBackend, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> AsyncIterator[Server]:
    monkeypatch.setenv("SLUICE_TEST_TOKEN", TOKEN)
    async with running_sluice(sluice_config(backend.url)) as server:
        yield server


BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
    {"X-Admin-Token": TOKEN},
]


async def test_every_mutating_admin_call_refuses_without_the_token_and_logs_it(
    admin_server: Server, logs: pytest.LogCaptureFixture
) -> None:
    routes = mutating_routes(admin_server)
    assert ("POST", "/reload") in routes and ("POST", "/mode") in routes
    base = f"http://127.0.0.1:{admin_server.admin_port}"
    generation = admin_server.sluice.snapshot.generation
    async with aiohttp.ClientSession() as s:
        for method, path in routes:
            for headers in BAD_AUTH:
                async with s.request(method, base + path, headers=headers, json={}) as r:
                    assert r.status == 401, (method, path, headers)
            # the token in the query string is not a bearer token either
            async with s.request(method, f"{base}{path}?token={TOKEN}", json={}) as r:
                assert r.status == 401
    refused = [r for r in logs.records if "admin call refused" in r.getMessage()]
    assert len(refused) == len(routes) * (len(BAD_AUTH) + 1)
    assert {getattr(r, "path", None) for r in refused} == {p for _, p in routes}
    assert all(getattr(r, "peer", None) == "127.0.0.1" for r in refused)
    assert all(r.levelno >= logging.WARNING for r in refused)
    assert admin_server.sluice.snapshot.generation == generation  # nothing happened

    # The positive control: with the token the same call goes through.
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/reload", headers={"Authorization": f"Bearer {TOKEN}"}) as r,
    ):
        assert r.status == 400  # no config file behind an in-process server, but authorised
        assert "no config file" in (await r.text())


async def test_without_a_configured_token_mutating_calls_are_refused(
    backend: EchoBackend, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SLUICE_TEST_TOKEN", raising=False)
    async with running_sluice(sluice_config(backend.url)) as server:
        base = f"http://127.0.0.1:{server.admin_port}"
        async with aiohttp.ClientSession() as s:
            for method, path in mutating_routes(server):
                for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
                    async with s.request(method, base + path, headers=headers) as r:
                        assert r.status == 403
    assert any("no admin token configured" in r.getMessage() for r in logs.records)


async def test_no_secret_in_status_metrics_or_logs(
    admin_server: Server, logs: pytest.LogCaptureFixture
) -> None:
    base = f"http://127.0.0.1:{admin_server.admin_port}"
    wrong = "attacker-guess-0123456789"
    bodies = []
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/reload", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            bodies.append(await r.text())
        async with s.post(base + "/mode", headers={"Authorization": f"Bearer {wrong}"}) as r:
            bodies.append(await r.text())
        for path in ("/status", "/metrics", "/healthz", "/readyz"):
            async with s.get(base + path) as r:
                assert r.status == 200
                bodies.append(await r.text())
        async with s.get(f"http://127.0.0.1:{admin_server.proxy_port}/echo") as r:
            bodies.append(await r.text())
    status = orjson.loads(bodies[2])
    assert "config_generation" in status
    text = "\n".join(bodies) + log_text(logs)
    assert TOKEN not in text
    assert TOKEN[:12] not in text  # not even a prefix
    assert wrong not in text  # nor what an attacker tried (no Authorization echo)
    assert "admin call refused" in text


def test_admin_listener_defaults_to_loopback() -> None:
    assert AdminConfig().host == "127.0.0.1"
    shipped = load_config(ROOT / "config" / "sluice.yaml")
    assert shipped.admin.host in ("127.0.0.1", "::1", "localhost")


# --- trust ---------------------------------------------------------------------------------
async def run_with_trust(
    backend: EchoBackend, sources: list[str], headers: dict[str, str]
) -> tuple[Ticket, dict[str, str]]:
    """One request from 127.0.0.1 with `trust.sources`; the Ticket the gate saw and the
    headers the backend received."""
    config = sluice_config(
        backend.url,
        trust={"sources": sources},
        callers={"known": [{"name": "repair-team", "priority": "critical"}]},
        region={"name": "eastus"},
    )
    seen: list[Ticket] = []
    async with running_sluice(config) as server:
        gate: Any = server.sluice.gate
        admit = gate.admit

        def spy(ticket: Ticket) -> Any:
            seen.append(ticket)
            return admit(ticket)

        gate.admit = spy
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{server.proxy_port}/echo", headers=headers) as r,
        ):
            doc = orjson.loads(await r.read())
    (ticket,) = seen
    return ticket, {k.lower(): v for k, v in doc["headers"]}


CLAIMS = {
    "x-caller-id": "repair-team",
    "x-priority": "critical",
    "x-origin-region": "westus",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "idp.example",
    "Forwarded": "for=203.0.113.9;proto=https",
}


@pytest.mark.parametrize("sources", [["10.0.0.0/8"], ["::1/128"], ["127.0.0.2/32"], []])
async def test_claims_from_an_untrusted_peer_are_ignored(
    backend: EchoBackend, sources: list[str]
) -> None:
    ticket, sent = await run_with_trust(backend, sources, CLAIMS)
    assert ticket.caller.startswith("bucket-") and ticket.caller_label == "other"
    assert ticket.priority == 2  # normal
    assert ticket.origin_region is None  # an unproven claim: the request counts as local
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] != "idp.example"
    assert "203.0.113.9" not in sent["forwarded"]


@pytest.mark.parametrize("sources", [["127.0.0.0/8"], ["127.0.0.1/32", "10.0.0.0/8"]])
async def test_claims_from_a_trusted_peer_are_believed(
    backend: EchoBackend, sources: list[str]
) -> None:
    ticket, sent = await run_with_trust(backend, sources, CLAIMS)
    assert (ticket.caller, ticket.caller_label) == ("repair-team", "repair-team")
    assert ticket.priority == 0  # critical
    assert ticket.origin_region == "westus"
    assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-forwarded-host"] == "idp.example"
    assert sent["forwarded"].startswith("for=203.0.113.9;proto=https, for=127.0.0.1")
