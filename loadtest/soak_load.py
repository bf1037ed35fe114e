"""The soak's load generator: base traffic of known callers, storms of unknown ones with retries,
deadlines and small bodies, and hostile input; its tally of answers by kind (`soak.py` runs it)."""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

KNOWN_CALLERS = ("orch-eastus", "orch-westus", "repair-team")
REQUEST_TIMEOUT = 10.0


@dataclass
class Tally:
    """What the generator saw, by kind; explained answers are the reason table's."""

    kinds: Counter[str] = field(default_factory=Counter)
    unexplained: Counter[str] = field(default_factory=Counter)
    outstanding: int = 0
    sent: int = 0

    def record(self, kind: str, explained: bool = True) -> None:
        """Count one answer or error of `kind`."""
        self.kinds[kind] += 1
        if not explained:
            self.unexplained[kind] += 1


class Load:
    """An open-loop generator: arrivals at a rate, each request its own task (bounded)."""

    def __init__(self, port: int, args: argparse.Namespace, tally: Tally) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.args = args
        self.tally = tally
        self.rng = random.Random(args.seed)
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None

    async def request(self, storm: bool) -> None:
        """One token request (a storm's: unknown callers, retries, repeats), tallied."""
        rng = self.rng
        assert self.session is not None
        headers = {}
        if storm and rng.random() < 0.7:
            headers["x-caller-id"] = f"fleet-{rng.getrandbits(40):010x}"  # unknown, unbounded
        else:
            headers["x-caller-id"] = rng.choice(KNOWN_CALLERS)
        if storm and rng.random() < 0.3:
            headers["x-retry-attempt"] = str(rng.randint(1, 3))
        if rng.random() < 0.3:
            headers["x-request-timeout-ms"] = str(rng.choice([500, 2000, 8000]))
        if rng.random() < 0.02:
            headers["x-retry-attempt"] = rng.choice(["-1", "abc", "1e3"])  # counted, ignored
        resource = rng.randrange(200 if storm else 2000)  # storms repeat themselves
        url = f"{self.base}/oauth2/token?resource=r{resource}"
        method, data = ("POST", b"grant_type=client_credentials&x=" + b"y" * rng.randrange(2000))
        if rng.random() < 0.5:
            method, data = "GET", b""
        try:
            async with self.session.request(method, url, headers=headers, data=data or None) as r:
                await r.read()
                reason = r.headers.get("x-sluice-reason")
                if r.status < 300:
                    self.tally.record("200")
                elif reason:
                    self.tally.record(f"{r.status} {reason}")
                else:
                    self.tally.record(f"{r.status} from backend", explained=False)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.tally.record(f"client error {type(exc).__name__}", explained=False)

    async def bad_input(self) -> None:
        """One malformed request and one slowloris connection; both must be refused."""
        cases = [
            b"GET /x HTTP/1.1\r\nHost: s\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: s\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ]
        for data in (self.rng.choice(cases), b"GET /slow HTTP/1.1\r\nHost: s\r\nX-A: "):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(data)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
                finally:
                    writer.close()
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                self.tally.record(f"bad input: {type(exc).__name__}", explained=False)
                continue
            status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.") else "none"
            ok = b"x-sluice-reason: bad-request" in head
            self.tally.record(f"bad input answered {status}", explained=ok)

    def spawn(self, coro: Any) -> None:
        """Run `coro` as its own task, unless `--max-outstanding` are open (then skipped)."""
        if self.tally.outstanding >= self.args.max_outstanding:
            coro.close()
            self.tally.record("client-skipped (generator at its bound)")
            return
        self.tally.outstanding += 1
        self.tally.sent += 1
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.tally.outstanding -= 1

        task.add_done_callback(done)
