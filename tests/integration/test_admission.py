"""The admission gate behind real listeners on loopback: spillover policies, caps, a queue that
sheds with a paced Retry-After, and every admitted request released.

No test here reads the clock: a wait in the queue, a hold and a Retry-After are checked as
states reached (metrics, `holding`) and against the decision the gate made (recorded by a spy),
whose arithmetic against its booking the gate's unit tests check on a fake clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.admission.gate import AdmissionGate
from proxy.contracts import Refusal
from proxy.edge import app
from proxy.edge.lifecycle import Server
from tests.support import EchoBackend, running_backend, running_sluice, sluice_config, wait_for


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with running_backend() as b:
        yield b


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def protected(backend: EchoBackend, **sections: Any) -> Any:
    base: dict[str, Any] = {
        "modes": {"protection": "on", "startup_window": "0s"},
        "region": {"name": "west"},
        "callers": {"known": [{"name": "orch"}, {"name": "banned", "cap": 0}]},
    }
    base.update(sections)
    return sluice_config(backend.url, **base)


def url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.proxy_port}{path}"


def gate(server: Server) -> AdmissionGate:
    g = server.sluice.gate
    assert isinstance(g, AdmissionGate)
    return g


def metric(server: Server, name: str) -> float:
    return server.sluice.metrics.registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize(("policy", "expected"), [("refuse", 503), ("spare", 200), ("allow", 200)])
async def test_spillover_policies(
    backend: EchoBackend, client: aiohttp.ClientSession, policy: str, expected: int
) -> None:
    config = protected(backend, region={"name": "west", "spillover": policy})
    async with running_sluice(config) as server:
        headers = {"x-origin-region": "east", "x-caller-id": "orch"}
        async with client.get(url(server, "/echo/x"), headers=headers) as resp:
            await resp.read()
            assert resp.status == expected
            if expected == 503:
                assert resp.headers["x-sluice-reason"] == "spillover"
                assert resp.headers["x-sluice-no-failover"] == "1"
                assert int(resp.headers["Retry-After"]) >= 1
        # Local traffic is served whatever the policy.
        async with client.get(url(server, "/echo/x"), headers={"x-origin-region": "west"}) as r:
            assert r.status == 200
        assert gate(server).in_flight == 0


async def test_spare_spillover_refused_outside_normal(
    backend: EchoBackend, client: aiohttp.ClientSession
) -> None:
    async with running_sluice(protected(backend)) as server:
        gate(server).command("recovery")
        headers = {"x-origin-region": "east"}
        async with client.get(url(server, "/echo/x"), headers=headers) as resp:
            assert resp.status == 503
            assert resp.headers["x-sluice-reason"] == "spillover"


async def test_calm_only_in_normal_and_not_draining(backend: EchoBackend) -> None:
    # What paces the full garbage collections (proxy.edge.gcpacing): never inside a surge.
    async with running_sluice(protected(backend)) as server:
        assert server.sluice.calm()
        gate(server).command("recovery")
        assert not server.sluice.calm()
        gate(server).command("normal")
        assert server.sluice.calm()
        await server.sluice.drain()
        assert not server.sluice.calm()


async def test_zero_cap_caller_gets_an_explicit_429(
    backend: EchoBackend, client: aiohttp.ClientSession
) -> None:
    async with running_sluice(protected(backend)) as server:
        headers = {"x-caller-id": "banned"}
        async with client.get(url(server, "/echo/x"), headers=headers) as resp:
            assert resp.status == 429
            assert resp.headers["x-sluice-reason"] == "caller-cap"
            assert "retry-after-ms" in resp.headers
        assert not backend.requests


async def _fill_the_limit(server: Server, client: aiohttp.ClientSession) -> list[Any]:
    """Two requests the backend holds: the limit (2) is full until `release_slow`."""
    held = [asyncio.create_task(client.get(url(server, "/hold"))) for _ in range(2)]
    g = gate(server)
    await wait_for(lambda: g.in_flight == 2, timeout=20)
    return held


async def test_at_the_limit_requests_wait_then_are_shed_with_a_paced_retry_after(
    backend: EchoBackend, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = protected(
        backend,
        limiter={"initial": 2, "floor": 1, "ceiling": 2},
        queue={"normal_max_wait": "200ms"},
    )
    answered: list[Refusal] = []  # every refusal the request path answers with
    respond = app.refusal_response

    def spy(refusal: Refusal, request_id: str | None) -> Any:
        answered.append(refusal)
        return respond(refusal, request_id)

    monkeypatch.setattr(app, "refusal_response", spy)
    async with running_sluice(config) as server:
        held = await _fill_the_limit(server, client)
        g = gate(server)
        async with client.get(url(server, "/echo/late")) as resp:
            body = await resp.read()
            assert resp.status == 503, body
            assert resp.headers["x-sluice-reason"] == "overload"
            retry_after_ms = int(resp.headers["retry-after-ms"])
        # It waited in the queue, was refused from there, and a return was booked for it.
        assert metric(server, "sluice_queue_wait_seconds_count") == 1
        assert metric(server, "sluice_retry_slots_booked_total") == 1
        [refusal] = answered
        assert (refusal.reason, refusal.retry_after_ms) == ("overload", retry_after_ms)
        # Told when to come back, counted from the answer (the end of any hold): the booked
        # return, at least `shedding.retry_after_min` (100 ms) after the refusal.
        assert retry_after_ms + refusal.hold * 1000 >= 100
        backend.release_slow.set()
        for task in held:
            resp = await task
            assert resp.status == 200
            resp.release()
        await wait_for(lambda: g.in_flight == 0, timeout=20)
        assert g.status()["queue"]["total"] == 0


@pytest.mark.parametrize("max_size", [20000, 0])
async def test_a_retry_over_its_budget_is_answered_after_a_hold(
    backend: EchoBackend,
    client: aiohttp.ClientSession,
    max_size: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The tarpit: the answer comes after the hold, with a Retry-After counted from its end;
    # past `queue.max_size` answers held at once, it comes now, with the hold added back.
    config = protected(
        backend,
        limiter={"initial": 2, "floor": 1, "ceiling": 2},
        retry_budget={"floor_per_s": 0, "global_floor_per_s": 0},
        queue={"max_size": max_size, "normal_max_wait": "5s"},
    )
    async with running_sluice(config) as server:
        held = await _fill_the_limit(server, client)
        g = gate(server)
        decided: list[Any] = []  # the gate's decisions, as it made them
        admit = g.admit

        def spy(ticket: Any) -> Any:
            decided.append(admit(ticket))
            return decided[-1]

        waiting = None
        if max_size:
            # A first try waits for a slot: the retry over its budget would take it (with
            # nobody waiting it would wait too: the budget is work-conserving).
            first = {"x-caller-id": "orch", "x-retry-attempt": "0", "x-request-timeout-ms": "9000"}
            waiting = asyncio.create_task(client.get(url(server, "/echo/first"), headers=first))
            await wait_for(lambda: g.status()["queue"]["total"] == 1, timeout=20)
        monkeypatch.setattr(g, "admit", spy)
        try:
            headers = {"x-caller-id": "orch", "x-retry-attempt": "1", "x-request-timeout-ms": "600"}

            async def again() -> tuple[int, Any]:
                async with client.get(url(server, "/echo/again"), headers=headers) as resp:
                    await resp.read()
                    return resp.status, resp.headers

            answer = asyncio.create_task(again())
            # Checked every loop iteration: a hold lasts at least one.
            sluice = server.sluice
            await wait_for(lambda: sluice.holding == 1 or answer.done(), timeout=20, interval=0)
            held_before_answered = sluice.holding == 1 and not answer.done()
            status, resp_headers = await answer
            assert status == 429
            assert resp_headers["x-sluice-reason"] == "retry-budget"
            retry_after_ms = int(resp_headers["retry-after-ms"])
            [refusal] = decided
            assert isinstance(refusal, Refusal)
            assert refusal.reason == "retry-budget" and refusal.hold > 0
            assert metric(server, "sluice_retry_slots_booked_total") == 1
            if max_size:
                # Held first, then answered with the Retry-After counted from the hold's end.
                assert held_before_answered
                assert metric(server, "sluice_held_refusals_total") == 1
                assert retry_after_ms == refusal.retry_after_ms
            else:
                # Past `queue.max_size` held answers: answered at once, the hold added back.
                assert not held_before_answered
                assert metric(server, "sluice_held_refusals_total") == 0
                assert retry_after_ms == refusal.retry_after_ms + math.ceil(refusal.hold * 1000)
            assert sluice.holding == 0
        finally:
            backend.release_slow.set()
            for task in held:
                (await task).release()
            if waiting is not None:
                (await waiting).release()
        assert not [r for r in backend.requests if r["path_qs"] == "/echo/again"]
