"""The real azure-identity client (the `azure-sdk` profile) gets tokens through Sluice from the
simulated token backend: the SDK's own IMDS request, retry policy and token parsing, unmodified."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from loadtest.backend_http import build_apps
from loadtest.backend_sim import BackendConfig, Simulator
from loadtest.identities import make_identities
from loadtest.sdkclient import (
    OTHER_PATHS,
    POD_IDENTITY_HOST,
    SharedSession,
    fetch_token,
    make_credential,
)
from tests.support import running_sluice, sluice_config


class Sink:
    """One workflow's records, as the fleet keeps them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.attempts: list[tuple[int, str, float | None]] = []
        self.held = 0

    def attempt_headers(self, attempt: int) -> list[tuple[str, str]]:
        return [("x-caller-id", "orchestrator-a"), ("x-request-id", f"{self.n:x}.{attempt}")]

    def attempt_done(
        self, attempt: int, started: float, finished: float, code: str, ra: float | None
    ) -> None:
        assert finished >= started
        self.attempts.append((attempt, code, ra))

    def attempt_held(self) -> None:
        self.held += 1


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(BackendConfig(workers=4, service_time=0.005, jitter=0.0))
    main_app, _admin = build_apps(sim)
    runner = web.AppRunner(main_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    yield sim, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_real_sdk_credentials_get_tokens_through_sluice(
    simulator: tuple[Simulator, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, backend_url = simulator
    config = sluice_config(backend_url, callers={"known": [{"name": "orchestrator-a"}]})
    async with running_sluice(config) as server:
        for name in OTHER_PATHS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(POD_IDENTITY_HOST, f"http://127.0.0.1:{server.proxy_port}")
        shared = SharedSession()
        identities = make_identities(1, ["orchestrator-a"], per_caller=2)[0]
        sinks = [Sink(n) for n in range(5)]
        creds: list[Any] = []
        try:
            # Five workflows, two identities: requests repeat byte for byte per identity.
            for n, sink in enumerate(sinks):
                creds.append(make_credential(shared, sink, identities[n % 2].client_id))
            tokens = [
                await fetch_token(cred, identities[n % 2].scope) for n, cred in enumerate(creds)
            ]
            # The SDK accepted the backend's answer: parsed, cached, not asked again.
            again = await fetch_token(creds[0], identities[0].scope)
        finally:
            for cred in creds:
                await cred.close()
            await shared.close()
    assert tokens == [sim.token] * 5
    assert again == sim.token
    assert [s.attempts for s in sinks] == [[(0, "200", None)]] * 5
    # Each attempt reached the backend with the harness's request id (the analysis's join key).
    assert sorted(c[1] for c in sim.completions) == [f"{n:x}.0" for n in range(5)]
    assert sim.counts["arrivals"] == 5


async def test_held_sdk_attempts_are_counted_and_sent_only_at_the_release(
    simulator: tuple[Simulator, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep judges a reopening void when fewer first attempts than N were ready at the
    # release: for the real SDK "ready" is built and held at the transport (counted here).
    sim, backend_url = simulator
    for name in OTHER_PATHS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(POD_IDENTITY_HOST, backend_url)
    shared = SharedSession()
    release = asyncio.Event()
    identity = make_identities(1, ["orchestrator-a"], per_caller=1)[0][0]
    sinks = [Sink(n) for n in range(3)]
    creds = [make_credential(shared, s, identity.client_id, hold=release) for s in sinks]
    try:
        tasks = [asyncio.create_task(fetch_token(c, identity.scope)) for c in creds]
        for _ in range(200):  # bounded: 2 s
            if sum(s.held for s in sinks) == len(sinks):
                break
            await asyncio.sleep(0.01)
        assert [s.held for s in sinks] == [1, 1, 1]
        assert sim.counts["arrivals"] == 0  # nothing sent before the release
        release.set()
        tokens = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for cred in creds:
            await cred.close()
        await shared.close()
    assert tokens == [sim.token] * 3
    assert [s.held for s in sinks] == [1, 1, 1]  # retries and later attempts are never held
