"""Sluice as a real process: SIGHUP reloads (bad files keep the old config), SIGTERM drains,
the admin listener guards its mutating calls, and a 50 MB body passes with flat memory.
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

TOKEN = "test-token-0123456789"


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with running_backend() as b:
        yield b


@pytest.fixture
def proc_factory(tmp_path: Path) -> Iterator[list[SluiceProcess]]:
    made: list[SluiceProcess] = []
    yield made
    for p in made:
        p.stop()


def start(
    made: list[SluiceProcess], tmp_path: Path, upstream: str, **sections: object
) -> SluiceProcess:
    os.environ["SLUICE_TEST_TOKEN"] = TOKEN
    proc = SluiceProcess(tmp_path / f"sluice{len(made)}.yaml", process_config(upstream, **sections))
    made.append(proc)
    proc.start()
    return proc


async def wait_status(s: aiohttp.ClientSession, admin: str, check: Any) -> None:
    """Poll admin /status until `check` holds (the timeout only guards against a hang)."""
    async with asyncio.timeout(20):
        while True:
            if check(await get_json(s, admin + "/status")):
                return
            await asyncio.sleep(0.02)


async def test_sighup_with_bad_file_keeps_serving_old_config(
    backend: EchoBackend, proc_factory: list[SluiceProcess], tmp_path: Path
) -> None:
    proc = start(proc_factory, tmp_path, backend.url)
    base = f"http://127.0.0.1:{proc.port}"
    admin = f"http://127.0.0.1:{proc.admin_port}"
    async with aiohttp.ClientSession() as s:
        proc.write("upstream:\n  url: http://127.0.0.1:1\nlisten:\n  bogus_key: 1\n")
        proc.signal(signal.SIGHUP)
        await wait_for(lambda: "config reload failed" in proc.log())
        assert "listen.bogus_key" in proc.log()
        async with s.get(base + "/echo") as r:
            assert r.status == 200  # still the old upstream
        status = await get_json(s, admin + "/status")
        assert status["config_generation"] == 1

        # a valid file with a changed log level is swapped in
        data = dict(proc.data, logging={"level": "debug"})
        proc.write(data)
        proc.signal(signal.SIGHUP)
        await wait_for(lambda: "config reloaded" in proc.log())
        status = await get_json(s, admin + "/status")
        assert status["config_generation"] == 2

        # a listen-port change is refused with a clear message
        data = dict(proc.data, listen={"host": "127.0.0.1", "port": proc.port + 1})
        proc.write(data)
        proc.signal(signal.SIGHUP)
        await wait_for(lambda: "need a restart" in proc.log())
        assert "listen.port" in proc.log()
        async with s.get(base + "/echo") as r:
            assert r.status == 200


async def test_sigterm_drains_in_flight_request_before_exit(
    backend: EchoBackend, proc_factory: list[SluiceProcess], tmp_path: Path
) -> None:
    # A drain timeout far longer than the test: the drain ends because the request finished.
    proc = start(proc_factory, tmp_path, backend.url, lifecycle={"drain_timeout": "60s"})
    admin = f"http://127.0.0.1:{proc.admin_port}"
    async with aiohttp.ClientSession() as s:
        # The backend holds the request until the test releases it.
        held = asyncio.create_task(s.get(f"http://127.0.0.1:{proc.port}/hold"))
        await wait_status(s, admin, lambda st: st["requests_in_progress"] == 1)
        proc.signal(signal.SIGTERM)
        await wait_for(lambda: '"msg":"draining"' in proc.log(), timeout=20)
        # Draining: the request is still in flight, and the process waits for it.
        assert not held.done()
        assert proc.proc is not None and proc.proc.poll() is None
        backend.release_slow.set()
        resp = await asyncio.wait_for(held, 20)
        assert resp.status == 200
        assert (await resp.json()) == {"held": True}
        resp.release()
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10.0)
    assert code == 0
    assert '"msg":"draining"' in proc.log()


async def test_admin_reload_requires_bearer_token(
    backend: EchoBackend, proc_factory: list[SluiceProcess], tmp_path: Path
) -> None:
    proc = start(proc_factory, tmp_path, backend.url)
    url = f"http://127.0.0.1:{proc.admin_port}/reload"
    async with aiohttp.ClientSession() as s:
        async with s.post(url) as r:
            assert r.status == 401
        async with s.post(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
            assert (await r.json()) == {"ok": True, "generation": 2}
        async with s.get(f"http://127.0.0.1:{proc.admin_port}/healthz") as r:
            assert r.status == 200
            assert r.headers["Server"] == "sluice"  # Sluice's own answer, no versions
        async with s.get(f"http://127.0.0.1:{proc.admin_port}/readyz") as r:
            assert r.status == 200
        async with s.post(url) as r:
            assert r.headers["Server"] == "sluice"
    assert "bad or missing bearer token" in proc.log()


async def test_fifty_megabytes_pass_with_flat_memory(
    backend: EchoBackend, proc_factory: list[SluiceProcess], tmp_path: Path
) -> None:
    proc = start(
        proc_factory,
        tmp_path,
        backend.url,
        listen={"max_body_size": 0},
    )
    size = 50 * 1024 * 1024
    block = b"z" * 65536
    base = f"http://127.0.0.1:{proc.port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/echo") as r:
            await r.read()
        before = proc.rss_peak_kb()

        async def upload() -> AsyncIterator[bytes]:
            for _ in range(size // len(block)):
                yield block

        async with s.post(base + "/sha", data=upload()) as r:
            assert (await r.json())["size"] == size
        got = 0
        async with s.get(base + f"/big/{size}") as r:
            async for chunk in r.content.iter_any():
                got += len(chunk)
        assert got == size
        growth_mb = (proc.rss_peak_kb() - before) / 1024
    # Buffering either body whole would add ≥ 50 MB; streaming stays within a few buffers.
    assert growth_mb < 25, f"peak RSS grew by {growth_mb:.1f} MB"
