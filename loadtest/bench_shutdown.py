"""Shutdown timings (issue 19): how long SIGTERM takes, and what a request cut off gets.

    python -m loadtest.bench_shutdown [--drain-timeout 3s] [--drain-grace 1s] [--hold 20]

A real Sluice process (`python -m proxy`) runs with `lifecycle.drain_timeout` in front of a
small backend (a child of this script) that holds `/hold` for `--hold` seconds and answers
everything else at once. One client sends `/hold`; once Sluice has it in flight, Sluice gets
SIGTERM. From then on this script polls `/readyz`, opens a new connection to the proxy every
20 ms (to see how long new connections are served), waits for the process to exit, and reads
what the held client got. It prints the time from SIGTERM to each event. Loopback only; both
children run in process groups of their own and are stopped on exit, whatever happens; the
whole run is bounded (`--hold` + 2 x drain timeout + 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.config_fields import parse_duration

from .procs import (
    Child,
    ProcessGroup,
    free_port,
    interrupt_on_termination,
    wait_port,
    write_sluice_config,
)

HELD_ID = "bench-held-request"
PROBE_EVERY = 0.02  # s between new-connection probes (and /readyz polls)


# --- the backend child ------------------------------------------------------------------------
def run_backend(port: int, hold: float, lifetime: float) -> None:
    """The backend child (`--backend PORT`): `/hold` answers after `hold` s, the rest at once;
    it exits by itself after `lifetime` s."""

    async def held(request: web.Request) -> web.Response:
        await asyncio.sleep(hold)
        return web.json_response({"held": True})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/hold", held)
        app.router.add_get("/{tail:.*}", fast)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.sleep(lifetime)
        await runner.cleanup()

    asyncio.run(main())


# --- what the run saw -------------------------------------------------------------------------
@dataclass
class Seen:
    """Seconds since SIGTERM of each event (None: not seen), and what the clients got."""

    ready_503: float | None = None
    refused: float | None = None
    exited: float | None = None
    exit_code: int | None = None
    held_at: float | None = None
    held_answer: str = "nothing yet"
    probes_served: int = 0  # new connections answered 200 after SIGTERM
    last_served: float | None = None
    probe_other: dict[str, int] = field(default_factory=dict)  # any other probe result


async def _held_client(port: int, seen: Seen, t0: list[float]) -> None:
    """Send `/hold` on a connection of its own and read until the connection closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\nx-request-id: {HELD_ID}\r\n"
        "x-retry-attempt: 0\r\n\r\n".encode()
    )
    try:
        data = await reader.read()  # to EOF: an answer, or a close without one
    except OSError as exc:
        data = b""
        seen.held_answer = f"connection error {exc.__class__.__name__}, no HTTP answer"
    seen.held_at = time.monotonic() - t0[0] if t0 else None
    writer.transport.abort()
    if data:
        head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        reason = [h for h in head[1:] if h.lower().startswith(("x-sluice-reason", "retry-after"))]
        seen.held_answer = ", ".join([head[0], *reason])
    elif seen.held_answer == "nothing yet":
        seen.held_answer = "connection closed with no HTTP answer (empty reply)"


async def _wait_in_flight(session: aiohttp.ClientSession, admin: str) -> None:
    """Until Sluice's /status counts the held request in progress."""
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(admin + "/status") as r:
                if (await r.json()).get("requests_in_progress", 0) >= 1:
                    return
        await asyncio.sleep(0.02)


async def _poll_readyz(session: aiohttp.ClientSession, admin: str, seen: Seen, t0: float) -> None:
    """The first /readyz 503 after SIGTERM (stops once the admin listener is gone)."""
    while seen.exited is None:
        try:
            async with session.get(admin + "/readyz") as r:
                if r.status == 503:
                    seen.ready_503 = time.monotonic() - t0
                    return
        except aiohttp.ClientError:
            return
        await asyncio.sleep(PROBE_EVERY)


async def _probe_listener(port: int, seen: Seen, t0: float) -> None:
    """A new connection every PROBE_EVERY s until one is refused or Sluice exits."""
    base = f"http://127.0.0.1:{port}/fast"
    connector = aiohttp.TCPConnector(force_close=True)  # every probe a new connection
    async with aiohttp.ClientSession(connector=connector) as session:
        while seen.exited is None:
            try:
                async with session.get(base, headers={"x-retry-attempt": "0"}) as r:
                    await r.read()
                    key = f"{r.status} {r.headers.get('x-sluice-reason', '')}".strip()
            except aiohttp.ClientConnectorError:
                seen.refused = time.monotonic() - t0
                return
            except aiohttp.ClientError as exc:
                key = exc.__class__.__name__
            if key == "200":
                seen.probes_served += 1
                seen.last_served = time.monotonic() - t0
            else:
                seen.probe_other[key] = seen.probe_other.get(key, 0) + 1
            await asyncio.sleep(PROBE_EVERY)


async def _wait_exit(sluice: Child, seen: Seen, t0: float) -> None:
    """When Sluice's process ends: its pidfd turns readable then (no polling delay)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not ended.done():
            ended.set_result(None)

    fd = os.pidfd_open(sluice.pid)
    loop.add_reader(fd, on_exit)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    code = sluice.popen.wait()
    seen.exited = time.monotonic() - t0
    seen.exit_code = code


async def observe(sluice: Child, port: int, admin_port: int, budget: float) -> Seen:
    """Hold one request, SIGTERM Sluice, and time what follows (bounded by `budget` s)."""
    seen = Seen()
    admin = f"http://127.0.0.1:{admin_port}"
    t0: list[float] = []  # SIGTERM's instant, once sent
    async with asyncio.timeout(budget), aiohttp.ClientSession() as session:
        held = asyncio.create_task(_held_client(port, seen, t0))
        await _wait_in_flight(session, admin)
        t0.append(time.monotonic())
        sluice.popen.send_signal(signal.SIGTERM)  # SIGTERM to Sluice alone, as the kubelet sends it
        await asyncio.gather(
            _poll_readyz(session, admin, seen, t0[0]),
            _probe_listener(port, seen, t0[0]),
            _wait_exit(sluice, seen, t0[0]),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(held, 2.0)
    return seen


def _at(value: float | None) -> str:
    return "never seen" if value is None else f"{value:5.2f} s"


def report(seen: Seen, args: argparse.Namespace, log_text: str) -> str:
    """The printout: seconds from SIGTERM to each event, and what the clients got."""
    grace = args.drain_grace or "default"
    others = ", ".join(f"{n} x {k}" for k, n in sorted(seen.probe_other.items())) or "none"
    mentions = sum(HELD_ID in line for line in log_text.splitlines())
    lines = [
        f"Sluice shutdown: lifecycle.drain_timeout {args.drain_timeout}, drain_grace {grace}; "
        f"one request held {args.hold:g} s by the backend",
        f"  SIGTERM -> /readyz 503:            {_at(seen.ready_503)}",
        f"  SIGTERM -> listener refuses:       {_at(seen.refused)}"
        f"   (new connections served 200 after SIGTERM: {seen.probes_served}, last at "
        f"{_at(seen.last_served).strip()}; other probe answers: {others})",
        f"  SIGTERM -> process exit:           {_at(seen.exited)}   (exit code {seen.exit_code})",
        f"  held request got:                  {seen.held_answer}, at {_at(seen.held_at)}",
        f"  Sluice log lines naming it:        {mentions}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> str:
    """Start the backend and Sluice, observe one shutdown, return the printout."""
    drain = parse_duration(args.drain_timeout)
    budget = args.hold + 2 * drain + 20.0
    with ProcessGroup(work) as group:
        backend_port, port, admin_port = free_port(), free_port(), free_port()
        me = ["-m", "loadtest.bench_shutdown", "--backend", str(backend_port)]
        backend = group.start("backend", [*me, "--hold", str(args.hold), "--life", str(budget)])
        wait_port(backend_port, alive=backend.alive)
        config = write_sluice_config(
            work / "sluice.yaml",
            port=port,
            upstream_port=backend_port,
            admin_port=admin_port,
            overrides={
                "upstream": {"read_timeout": "120s"},  # past the hold: the drain ends it
                "lifecycle": {"drain_timeout": args.drain_timeout},
            },
            # Unset unless given: Sluice's own default (and a config the code before
            # `drain_grace` existed accepts).
            drain_grace=args.drain_grace,
        )
        sluice = group.start("sluice", ["-m", "proxy", "--config", str(config)])
        wait_port(port, alive=sluice.alive)
        wait_port(admin_port, alive=sluice.alive)
        seen = asyncio.run(observe(sluice, port, admin_port, budget))
        return report(seen, args, sluice.log_path.read_text(errors="replace"))


def main(argv: list[str] | None = None) -> int:
    """Command line of `python -m loadtest.bench_shutdown` (also its backend child)."""
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_shutdown", description=__doc__)
    p.add_argument("--drain-timeout", default="3s", help="lifecycle.drain_timeout (default 3s)")
    p.add_argument("--drain-grace", default=None, help="lifecycle.drain_grace (default: unset)")
    p.add_argument("--hold", type=float, default=20.0, help="s the backend holds /hold")
    p.add_argument("--logs", type=Path, default=None, help="keep the logs and config here")
    p.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    p.add_argument("--life", type=float, default=120.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.backend:
        run_backend(args.backend, args.hold, args.life)
        return 0
    interrupt_on_termination()
    if args.logs is not None:
        print(run(args, args.logs))
        return 0
    with tempfile.TemporaryDirectory(prefix="sluice-bench-shutdown-") as tmp:
        print(run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
