"""The bench's memory figure: Sluice's resident size while it holds 10,000 clients waiting.

Sluice (lean client) is put in RECOVERY by POST /mode in front of a backend that sleeps on every
token request, so every request queues; RSS is read as soon as the `sluice_queue_depth` gauges
sum to WAITING, with every client still connected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
from dataclasses import dataclass, field
from typing import Any

from .bench_rig import LOAD_CORE, PROXY_CORE, start_pinned
from .bench_servers import SluiceProc, gate_available, start_sluice
from .procs import ProcessGroup, free_port, merge_sections, rss_mb, wait_port

WAITING = 10_000
# The memory row holds 10,000 clients that each say they will wait 15 minutes
# (x-request-timeout-ms); the gate queues a request only if its estimated wait fits
# `queue.max_wait` (30 s by default, too short for 10,000 at a slowed backend's pace).
MEMORY_OVERRIDES: dict[str, dict[str, Any]] = {"queue": {"max_wait": "600s"}}
MEMORY_TIMEOUT_MS = 900_000


@dataclass
class Held:
    """What the 10,000-client hold saw."""

    opened: int = 0
    answered: dict[str, int] = field(default_factory=dict)  # status line -> clients
    depth: float = 0.0  # the queue gauges' sum when sampled
    rss: float = float("nan")  # MB, sampled with every client still connected
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


class _Clients:
    """The held clients: each opens a connection of its own, sends one request and waits for its
    answer (or the connection's close); at most 256 connect at once (the listen backlog is 4096)."""

    def __init__(self, port: int, held: Held) -> None:
        self.port = port
        self.held = held
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.connecting = asyncio.Semaphore(256)

    async def client(self, i: int) -> None:
        """Client `i`: connect, send, wait; what ended the wait is counted in `held.answered`."""
        held = self.held
        async with self.connecting:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                if len(held.problems) < 5:
                    held.problems.append(f"connect: {exc}")
                return
        self.writers.append(writer)
        # A distinct target per client and an explicit first attempt: never a retry.
        writer.write(
            f"GET /token?client={i} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"x-request-timeout-ms: {MEMORY_TIMEOUT_MS}\r\n\r\n".encode()
        )
        with contextlib.suppress(OSError):
            line = await reader.readline()  # only an answer (or a close) ends the wait
            key = line.decode(errors="replace").strip()[9:] or "closed"
            held.answered[key] = held.answered.get(key, 0) + 1
        writer.transport.abort()

    def spawn(self, n: int) -> None:
        """Start `n` more clients."""
        for _ in range(n):
            task = asyncio.get_running_loop().create_task(self.client(self.held.opened))
            self.held.opened += 1
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        """Stop every client and drop its connection."""
        for task in self.tasks:
            task.cancel()
        for w in self.writers:
            w.transport.abort()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _hold_clients(port: int, sluice: SluiceProc, target: int, timeout: float) -> Held:
    """Open connections that each send one request and wait, until the gauge reads `target`.

    A few go upstream (in flight, not queued) and some may be answered at once; once every
    client sent so far is accounted for (queued, in flight or answered), the shortfall is
    topped up. RSS is sampled as soon as the `sluice_queue_depth` gauges sum to `target`.
    """
    loop = asyncio.get_running_loop()
    held = Held()
    clients = _Clients(port, held)
    started = loop.time()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    max_open = min(target + target // 5, hard - 1000)
    try:
        clients.spawn(target)
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(0.25)
            held.depth = await loop.run_in_executor(None, sluice.queue_depth)
            if held.depth >= target:
                held.rss = rss_mb(sluice.proc.pid)
                break
            st = await loop.run_in_executor(None, sluice.status)
            queued, in_flight = st["queue"]["total"], st["in_flight"]
            answered = sum(held.answered.values())
            unaccounted = held.opened - answered - queued - in_flight - len(held.problems)
            if unaccounted <= 0 and queued < target:
                clients.spawn(min(target - queued, max_open - held.opened))
        held.seconds = loop.time() - started
        return held
    finally:
        await clients.close()


def memory_test(group: ProcessGroup, args: argparse.Namespace) -> dict[str, Any]:
    """The memory line of the report (`text`) and the RSS it measured (`rss`: None when the
    gauge never reached WAITING or Sluice could not run)."""
    if not gate_available():
        return {"text": "memory with 10,000 waiting: skipped: gate not available", "rss": None}
    slow_port = free_port()
    argv = [sys.executable, "-m", "loadtest.bench", "--slow-backend", str(slow_port)]
    slow = start_pinned(group, "slow-backend", argv, LOAD_CORE)
    wait_port(slow_port, alive=slow.alive)
    extra = merge_sections(MEMORY_OVERRIDES, args.sluice_extra)
    sp = start_sluice(group, "sluice-memory", slow_port, "lean", extra)
    try:
        wait_port(sp.port, alive=sp.proc.alive)
        wait_port(sp.admin, alive=sp.proc.alive)
    except RuntimeError as exc:
        text = f"memory with {WAITING} waiting: Sluice did not start: {exc}: {sp.proc.log_tail(1)}"
        return {"text": text[:500], "rss": None}
    idle = rss_mb(sp.proc.pid)
    sp.command({"mode": "recovery"})
    import uvloop

    held = uvloop.run(_hold_clients(sp.port, sp, WAITING, 40.0))
    mode = sp.status().get("mode") if sp.proc.alive() else "exited"
    group.stop(sp.proc)
    group.stop(slow)
    ok = held.depth >= WAITING
    per_client = (held.rss - idle) * 1024 / max(1.0, held.depth)
    answered = ", ".join(f"{n} x {k}" for k, n in sorted(held.answered.items())) or "none"
    text = (
        f"Memory: Sluice (lean, default config + queue.max_wait=600s, RECOVERY by POST /mode, "
        f"backend sleeping, core {PROXY_CORE}; each client sends x-request-timeout-ms: "
        f"{MEMORY_TIMEOUT_MS}): "
        f"{held.opened} client connections, queue gauge {held.depth:.0f} -> "
        f"{held.rss:.1f} MB resident (idle {idle:.1f} MB: {per_client:.1f} KB per waiting "
        f"client), reached in {held.seconds:.1f}s; answered before the sample: {answered}; "
        f"mode {mode}"
    )
    if not ok:
        text += f"\n  the queue gauge never read {WAITING} (last {held.depth:.0f})"
    if held.problems:
        text += f"\n  client problems: {'; '.join(held.problems)}"
    rss = held.rss
    return {"text": text, "rss": rss if ok else None}
