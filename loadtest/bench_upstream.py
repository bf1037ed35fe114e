"""Micro benchmark: CPU time per request of the two upstream clients (a script, not a test).

    python -m loadtest.bench_upstream [--requests 20000] [--concurrency 32] [--rounds 3]

A trivial keep-alive backend (a raw asyncio Protocol answering every request with the same
~200-byte JSON) runs in a subprocess on 127.0.0.1, so its CPU is not counted. This process
sends the requests through AiohttpUpstream and LeanUpstream in turn (on uvloop), reading each
body to the end and releasing it, and reports process CPU time (time.process_time) divided by
requests: the client's own cost, which is what issue 7 is about. Bounded to well under 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from multidict import CIMultiDict

from proxy.config import UpstreamConfig
from proxy.upstream import UpstreamClient, UpstreamRequest, make_upstream

from .procs import free_port

BODY = (
    b'{"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1l'
    b'bnQuYXp1cmUuY29tIn0.c2lnbmF0dXJl","expires_in":"86399","token_type":"Bearer"}'
)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
    len(BODY),
    BODY,
)


class _Backend(asyncio.Protocol):
    """Answers each request (no bodies: counted by their blank line) with RESPONSE."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        n = data.count(b"\r\n\r\n")
        self.tail = data[data.rfind(b"\r\n\r\n") + 4 :] if n else data
        if n:
            self.transport.write(RESPONSE * n)


def run_backend(port: int) -> None:
    """The backend child (`--backend PORT`): _Backend on uvloop, "ready" once listening."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Backend, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(main())


@contextlib.contextmanager
def backend() -> Iterator[str]:
    """The backend in a child process while in the block; its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.bench_upstream", "--backend", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


async def drive(client: UpstreamClient, requests: int, concurrency: int) -> None:
    """`requests` GETs through `client`, `concurrency` at a time, each body read and released."""
    headers: CIMultiDict[str] = CIMultiDict(
        {"Accept": "application/json", "x-caller-id": "bench", "x-request-id": "r-1"}
    )

    async def worker(n: int) -> None:
        for _ in range(n):
            resp = await client.send(UpstreamRequest("GET", "/token?resource=x", headers, None, 5))
            try:
                while await resp.read_chunk():
                    pass
                assert resp.status == 200
            finally:
                resp.release()

    share, extra = divmod(requests, concurrency)
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))


async def measure(
    url: str, kind: str, requests: int, concurrency: int
) -> tuple[float, float, float]:
    """µs of CPU per request (all, then the kernel's share) and requests per second."""
    config = UpstreamConfig(url=url, client=kind, pool_size=concurrency)
    client = make_upstream(config)
    try:
        await drive(client, min(2000, requests), concurrency)  # warm up: connections, caches
        gc.collect()
        cpu, sys_, wall = time.process_time(), os.times().system, time.perf_counter()
        await drive(client, requests, concurrency)
        cpu, sys_ = time.process_time() - cpu, os.times().system - sys_
        wall = time.perf_counter() - wall
    finally:
        await client.close()
    return cpu / requests * 1e6, sys_ / requests * 1e6, requests / wall


def main() -> None:
    """Command line of `python -m loadtest.bench_upstream` (also its backend child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        run_backend(args.backend)
        return

    import uvloop

    kinds = ("aiohttp", "lean")
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    kernel: dict[str, list[float]] = {k: [] for k in kinds}
    rate: dict[str, list[float]] = {k: [] for k in kinds}
    with backend() as url:
        for _ in range(args.rounds):
            for kind in kinds:  # interleaved, so drift on a shared machine hits both
                us, sys_us, rps = uvloop.run(measure(url, kind, args.requests, args.concurrency))
                cpu[kind].append(us)
                kernel[kind].append(sys_us)
                rate[kind].append(rps)

    print(
        f"{args.requests} GETs per round, concurrency {args.concurrency}, {args.rounds} rounds, "
        f"uvloop, backend in a subprocess on 127.0.0.1 (not pinned); median (min-max)"
    )
    print(f"{'client':<8} {'CPU us/request':>24} {'of which kernel':>16} {'requests/s':>24}")
    for kind in kinds:
        c, r = cpu[kind], rate[kind]
        print(
            f"{kind:<8} {statistics.median(c):>10.1f} ({min(c):5.1f}-{max(c):5.1f})"
            f" {statistics.median(kernel[kind]):>16.1f}"
            f" {statistics.median(r):>10.0f} ({min(r):5.0f}-{max(r):5.0f})"
        )
    ratio = statistics.median(cpu["lean"]) / statistics.median(cpu["aiohttp"])
    print(f"lean / aiohttp CPU per request: {ratio:.2f}")


if __name__ == "__main__":
    main()
