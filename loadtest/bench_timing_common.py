"""What bench_timing's sections share: the token path, a loopback app server, and how a
duration and a spread of durations are printed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .bench_load import pct

ROOT = Path(__file__).resolve().parent.parent  # children run `-m ...` from here
TOKEN = "/token?resource=bench&client_id=c1"


def ms(seconds: float) -> str:
    """Seconds as milliseconds, one decimal."""
    return f"{seconds * 1000:.1f}"


def spread(values: Sequence[float]) -> str:
    """p50 / p99 / max in ms."""
    return f"p50 {ms(pct(values, 0.5))}, p99 {ms(pct(values, 0.99))}, max {ms(max(values))} ms"


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """`app` on an ephemeral loopback port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])
