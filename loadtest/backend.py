"""`python -m loadtest.backend`: a simulated managed-identity (token) backend that fails the way
real ones do, as its own process (the model: `backend_sim.py`; its HTTP face: `backend_http.py`).

Run: `python -m loadtest.backend --port P --admin-port Q [--workers 10 --service-time 0.05 ...]`.
The admin listener serves `/ready`, `/stats` (`?raw=0`: counters, peaks and a per-second
timeline without the raw per-request records), `POST /admin/outage` and `POST /admin/workers`;
the main listener serves the token endpoint (any path) and `/healthz`. The process samples
busy workers and the queue every 50 ms and stops on SIGTERM/SIGINT, when its parent dies or
after `--max-lifetime`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from aiohttp import web

from .backend_http import build_apps
from .backend_sim import BackendConfig, Simulator

_SAMPLE_EVERY = 0.05  # busy/queue sampling period


async def serve(
    config: BackendConfig,
    host: str,
    port: int,
    admin_port: int,
    max_lifetime: float,
    parent_pid: int | None,
) -> None:
    """Run both listeners until SIGTERM/SIGINT, the parent dies, or `max_lifetime` passes."""
    sim = Simulator(config)
    main_app, admin_app = build_apps(sim)
    # keepalive above any run's length; access log off (it would cost more than the work).
    runners = [
        web.AppRunner(main_app, access_log=None, keepalive_timeout=120.0),
        web.AppRunner(admin_app, access_log=None),
    ]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], host, port, backlog=4096, reuse_address=True).start()
    await web.TCPSite(runners[1], host, admin_port, reuse_address=True).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = loop.time() + max_lifetime
    print(f"backend {config.name} ready on {host}:{port} admin {admin_port}", flush=True)
    ticks = 0
    while not stop.is_set() and loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _SAMPLE_EVERY)
        sim.sample()
        ticks += 1
        if parent_pid is not None and ticks % 20 == 0 and os.getppid() != parent_pid:
            break  # orphaned: the harness died without tearing us down
    for runner in runners:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Command line of the backend process."""
    p = argparse.ArgumentParser(prog="python -m loadtest.backend", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin-port", type=int, required=True)
    p.add_argument("--name", default="backend")
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--service-time", type=float, default=0.05, help="seconds")
    p.add_argument("--queue-limit", type=int, default=1000)
    p.add_argument("--thrash", type=float, default=0.5)
    p.add_argument("--jitter", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-lifetime", type=float, default=600.0, help="exit after this (s)")
    p.add_argument("--parent-pid", type=int, default=None)
    args = p.parse_args(argv)
    config = BackendConfig(
        name=args.name,
        workers=args.workers,
        service_time=args.service_time,
        queue_limit=args.queue_limit,
        thrash=args.thrash,
        jitter=args.jitter,
        seed=args.seed,
    )
    try:
        import uvloop

        runner_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        runner_factory = None
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        runner.run(
            serve(config, args.host, args.port, args.admin_port, args.max_lifetime, args.parent_pid)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
