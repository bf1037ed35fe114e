"""SIGTERM to a real Sluice process: the order of what follows and the answers given (issue 19).

/readyz turns 503 first; during `lifecycle.drain_grace` new connections are still served (their
answers say `Connection: close`); then the listener refuses; a request the backend holds past
`drain_timeout` gets 503 `draining` with `x-sluice-reason` (not an empty reply) and one log line;
then the process exits 0. One whose answer had begun is cut (its body can never look complete),
also logged. Orders and answers are asserted, never timings (those: loadtest/bench_shutdown.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import SluiceProcess, get_json, merge, process_config, wait_for

TOKEN = "shutdown-order-token"


class Backend:
    """`/fast` answers at once, `/hold` never, `/stream` sends its headers and a first chunk
    and then nothing more."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/hold", self.hold)
        self.app.router.add_get("/stream", self.stream)
        self.app.router.add_get("/{tail:.*}", self.fast)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def fast(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def hold(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        await asyncio.sleep(3600)
        return resp


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    try:
        yield b
    finally:
        await b.runner.cleanup()


@pytest.fixture
def procs() -> Iterator[list[SluiceProcess]]:
    made: list[SluiceProcess] = []
    yield made
    for p in made:
        p.stop()


def start(procs: list[SluiceProcess], tmp_path: Path, upstream: str, **lifecycle: str) -> Any:
    os.environ.setdefault("SLUICE_TEST_TOKEN", TOKEN)
    # The backend's time is the drain's to cut, never the upstream timeout's.
    data = merge(
        process_config(upstream, lifecycle=lifecycle), {"upstream": {"read_timeout": "120s"}}
    )
    proc = SluiceProcess(tmp_path / "sluice.yaml", data)
    procs.append(proc)
    proc.start()
    return proc


async def get(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-retry-attempt": "0"}  # a first try: no retry budget involved
    async with s.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds (the bound only guards against a hang)."""
    for _ in range(1000):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def in_progress(s: aiohttp.ClientSession, admin: str, n: int) -> None:
    async def check() -> bool:
        return bool((await get_json(s, admin + "/status"))["requests_in_progress"] == n)

    await until(check)


async def not_ready(admin: str) -> bool:
    async with aiohttp.ClientSession() as s, s.get(admin + "/readyz") as r:
        return r.status == 503


async def watch(proc: SluiceProcess, events: list[str]) -> list[int]:
    """After SIGTERM: poll /readyz and open a new connection to the proxy, in turn, until one is
    refused, noting the first "readyz 503", every "served" and the "refused" in `events`.
    Returns the statuses of new connections served after /readyz said 503."""
    base = f"http://127.0.0.1:{proc.port}"
    admin = f"http://127.0.0.1:{proc.admin_port}"
    served: list[int] = []
    fresh = aiohttp.TCPConnector(force_close=True)  # every request a new connection
    async with aiohttp.ClientSession(connector=fresh) as s, asyncio.timeout(30):
        while True:
            if "readyz 503" not in events:
                async with s.get(admin + "/readyz") as r:
                    if r.status == 503:
                        events.append("readyz 503")
            try:
                status, _, _ = await get(s, base + "/fast")
            except aiohttp.ClientConnectorError:
                events.append("refused")
                return served
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                # Accepted in the instant the listener closed: TCP resets it; the next is refused.
                events.append("dropped")
                continue
            events.append("served")
            if "readyz 503" in events:
                served.append(status)
            await asyncio.sleep(0.02)


async def test_sigterm_not_ready_then_serving_through_the_grace_then_refusing_then_cut_then_exit(
    backend: Backend, procs: list[SluiceProcess], tmp_path: Path
) -> None:
    # The deadline well after the grace: the listener must close long before the cut, even on
    # a loaded machine (a 3 s gap failed once in CI).
    proc = start(procs, tmp_path, backend.url, drain_timeout="9s", drain_grace="2s")
    base = f"http://127.0.0.1:{proc.port}"
    admin = f"http://127.0.0.1:{proc.admin_port}"
    events: list[str] = []
    async with aiohttp.ClientSession() as s:
        held = asyncio.create_task(get(s, base + "/hold"))
        held.add_done_callback(lambda _: events.append("held answered"))
        await in_progress(s, admin, 1)
        proc.signal(signal.SIGTERM)

        served = await watch(proc, events)
        assert not held.done()  # the listener closed, the held request still runs
        status, headers, body = await asyncio.wait_for(held, 30)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30.0)
        events.append("exited")

    # The order: not ready, still serving new connections, refusing, the cut, the exit.
    first_503, refused = events.index("readyz 503"), events.index("refused")
    assert first_503 < refused
    assert "served" in events[first_503:refused], events
    assert events[refused:] == ["refused", "held answered", "exited"]
    # New connections during the grace were served (and told to close: the next test).
    assert served and all(st == 200 for st in served)
    # The held request got an explicit answer, not an empty reply.
    assert (status, headers["x-sluice-reason"]) == (503, "draining")
    assert int(headers["Retry-After"]) >= 1
    assert b"draining" in body
    assert code == 0
    log = proc.log()
    order = [
        log.index('"msg":"draining"'),
        log.index('"msg":"listener closed"'),
        log.index("cut off at the drain deadline"),
        log.index('"msg":"stopped"'),
    ]
    assert order == sorted(order)
    [cut] = [line for line in log.splitlines() if "cut off at the drain deadline" in line]
    assert '"path":"/hold"' in cut and '"sent":"503 draining"' in cut and '"ran_ms":' in cut


async def test_a_keep_alive_connection_used_during_the_grace_is_told_to_close(
    backend: Backend, procs: list[SluiceProcess], tmp_path: Path
) -> None:
    proc = start(procs, tmp_path, backend.url, drain_timeout="4s", drain_grace="3s")
    base = f"http://127.0.0.1:{proc.port}"
    admin = f"http://127.0.0.1:{proc.admin_port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        status, headers, _ = await get(s, base + "/fast")
        assert headers.get("Connection", "").lower() != "close"
        proc.signal(signal.SIGTERM)
        await until(lambda: not_ready(admin))
        status, headers, _ = await get(s, base + "/fast")  # the same connection (limit 1)
    assert status == 200
    assert headers["Connection"].lower() == "close"
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30.0)
    assert code == 0


async def test_a_request_whose_answer_had_begun_is_cut_and_logged(
    backend: Backend, procs: list[SluiceProcess], tmp_path: Path
) -> None:
    proc = start(procs, tmp_path, backend.url, drain_timeout="1s", drain_grace="0s")
    base = f"http://127.0.0.1:{proc.port}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(base + "/stream", headers={"x-retry-attempt": "0"}) as r,
    ):
        assert r.status == 200
        assert len(await r.content.readexactly(1000)) == 1000
        proc.signal(signal.SIGTERM)
        # The body can never look complete: the connection breaks instead of ending.
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(30):
                await r.read()
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30.0)
    assert code == 0
    await wait_for(lambda: '"msg":"stopped"' in proc.log())
    [cut] = [line for line in proc.log().splitlines() if "cut off at the drain deadline" in line]
    assert '"path":"/stream"' in cut
    assert "bytes of the answer, then the connection aborted" in cut


async def test_an_idle_keep_alive_connection_closes_with_the_listener(
    backend: Backend, procs: list[SluiceProcess], tmp_path: Path
) -> None:
    # A request sent on a pooled connection as the listener closes must not wait unanswered to
    # the drain's deadline: the connection closes at once (its client retries elsewhere).
    proc = start(procs, tmp_path, backend.url, drain_timeout="9s", drain_grace="0s")
    base = f"http://127.0.0.1:{proc.port}"
    admin = f"http://127.0.0.1:{proc.admin_port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    request = b"GET /fast HTTP/1.1\r\nHost: x\r\nx-retry-attempt: 0\r\n\r\n"
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
    [length] = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
    await reader.readexactly(int(length.split(b":")[1]))
    async with aiohttp.ClientSession() as s:
        held = asyncio.create_task(get(s, base + "/hold"))  # keeps the process in its drain
        await in_progress(s, admin, 1)
        proc.signal(signal.SIGTERM)
        await until(lambda: not_ready(admin))
        await wait_for(lambda: '"msg":"listener closed"' in proc.log())
        writer.write(request)
        try:
            rest = await asyncio.wait_for(reader.read(), 30)
        except ConnectionResetError:  # the request reached an already closed socket
            rest = b""
        assert not held.done()  # closed with the listener, not at the drain's deadline
        status, _, _ = await asyncio.wait_for(held, 30)
    writer.close()
    assert rest == b""  # closed, never answered
    assert status == 503
