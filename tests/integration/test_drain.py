"""SIGTERM under load, in a real Sluice process with the real admission gate: requests in
flight finish (up to the drain timeout, past which each is answered 503 `draining` and logged),
requests waiting in the gate's queue are answered 503 `draining` with Retry-After, none is
dropped silently, /readyz says draining meanwhile, and the process exits 0. (The drain grace is
0 here, as in every test's config: tests/integration/test_shutdown_order.py is about it.)
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    EchoBackend,
    SluiceProcess,
    get_json,
    process_config,
    running_backend,
    wait_for,
)

LIMIT = 2
QUEUED = 6


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with running_backend() as b:
        yield b


@pytest.fixture
def procs() -> Iterator[list[SluiceProcess]]:
    made: list[SluiceProcess] = []
    yield made
    for p in made:
        p.stop()


def start(procs: list[SluiceProcess], tmp_path: Path, upstream: str, drain: str) -> SluiceProcess:
    os.environ.setdefault("SLUICE_TEST_TOKEN", "drain-test-token")
    data = process_config(
        upstream,
        modes={"protection": "on"},
        # A fixed limit of 2 and patient queues: the third request onwards waits in the gate.
        limiter={"initial": LIMIT, "floor": LIMIT, "ceiling": LIMIT},
        queue={"max_wait": "30s", "normal_max_wait": "30s"},
        lifecycle={"drain_timeout": drain},
    )
    proc = SluiceProcess(tmp_path / "sluice.yaml", data)
    procs.append(proc)
    proc.start()
    return proc


async def fill(
    s: aiohttp.ClientSession, proc: SluiceProcess
) -> tuple[list[asyncio.Task[Any]], list[asyncio.Task[Any]]]:
    """LIMIT requests held in flight at the backend, then QUEUED waiting in the gate."""
    base = f"http://127.0.0.1:{proc.port}"
    admin = f"http://127.0.0.1:{proc.admin_port}"
    first = {"x-retry-attempt": "0"}  # every request a first try: no retry budget involved

    async def call(path: str) -> tuple[int, dict[str, str], bytes]:
        async with s.get(base + path, headers=first) as r:
            return r.status, dict(r.headers), await r.read()

    held = [asyncio.create_task(call(f"/hold?n={i}")) for i in range(LIMIT)]
    await wait_status(s, admin, lambda st: st["in_flight"] == LIMIT)
    queued = [asyncio.create_task(call(f"/echo/q{i}")) for i in range(QUEUED)]
    await wait_status(s, admin, lambda st: st["queue"]["total"] == QUEUED)
    return held, queued


async def wait_status(s: aiohttp.ClientSession, admin: str, check: Any) -> None:
    for _ in range(500):
        if check(await get_json(s, admin + "/status")):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"status never matched: {await get_json(s, admin + '/status')}")


async def test_sigterm_finishes_in_flight_and_answers_the_queue_draining(
    backend: EchoBackend, procs: list[SluiceProcess], tmp_path: Path
) -> None:
    proc = start(procs, tmp_path, backend.url, drain="20s")
    admin = f"http://127.0.0.1:{proc.admin_port}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        held, queued = await fill(s, proc)
        proc.signal(signal.SIGTERM)

        answers = await asyncio.wait_for(asyncio.gather(*queued), 15)
        for status, headers, body in answers:
            assert status == 503
            assert headers["x-sluice-reason"] == "draining"
            assert int(headers["Retry-After"]) >= 1
            assert b"draining" in body
        # Still draining: the held requests are in flight, and the pod is not ready.
        assert not any(t.done() for t in held)
        async with s.get(admin + "/readyz") as r:
            assert r.status == 503
        backend.release_slow.set()
        for status, _, body in await asyncio.wait_for(asyncio.gather(*held), 15):
            assert (status, body) == (200, b'{"held": true}')
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 15.0)
    assert code == 0
    # The queued requests never reached the backend; the held ones did, once each.
    paths = [r["path_qs"] for r in backend.requests]
    assert not any(p.startswith("/echo/q") for p in paths)


async def test_sigterm_with_requests_stuck_past_the_drain_timeout_answers_them_and_exits_0(
    backend: EchoBackend, procs: list[SluiceProcess], tmp_path: Path
) -> None:
    proc = start(procs, tmp_path, backend.url, drain="500ms")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        held, queued = await fill(s, proc)
        proc.signal(signal.SIGTERM)
        answers = await asyncio.wait_for(asyncio.gather(*queued), 15)
        assert {(a[0], a[1]["x-sluice-reason"]) for a in answers} == {(503, "draining")}
        # The backend never answers: at the drain timeout the requests still forwarded are cut,
        # and, their answers not begun, each gets an explicit 503 `draining` (not an empty
        # reply), with when to come back.
        results = await asyncio.wait_for(asyncio.gather(*held), 15)
        for status, headers, body in results:
            assert (status, headers["x-sluice-reason"]) == (503, "draining")
            assert int(headers["Retry-After"]) >= 1
            assert headers["Connection"].lower() == "close"
            assert b"draining" in body
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 15.0)
    assert code == 0
    await wait_for(lambda: '"msg":"stopped"' in proc.log())
    # One log line per request cut off, saying what its client got.
    cut = [line for line in proc.log().splitlines() if "cut off at the drain deadline" in line]
    assert len(cut) == LIMIT
    assert all('"sent":"503 draining"' in line for line in cut)
    assert sorted(line.split('"path":"')[1].split('"')[0] for line in cut) == ["/hold"] * LIMIT
