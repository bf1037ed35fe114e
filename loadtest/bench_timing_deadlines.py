"""bench_timing's `deadlines` section: Sluice and the simulated backend as child processes, a
200/s storm with `x-request-timeout-ms` against a gate that queues, then with the backend
SIGKILLed; each answer's time against its deadline (the timings
tests/integration/test_fault_recovery.py no longer asserts)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import aiohttp

from .bench_timing_common import ROOT, ms, spread
from .procs import ProcessGroup, free_port, wait_port, write_sluice_config


# --- deadlines --------------------------------------------------------------------------------
async def storm(base: str, seconds: float, deadline_ms: int) -> list[tuple[float, str]]:
    """200 requests/s for `seconds`, each with a deadline: (answer time, outcome) each."""
    loop = asyncio.get_running_loop()
    results: list[tuple[float, str]] = []
    headers = {"x-retry-attempt": "0", "x-request-timeout-ms": str(deadline_ms)}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(n: int) -> None:
            sent = loop.time()
            try:
                async with asyncio.timeout(deadline_ms / 1000 + 10.0):
                    async with session.get(f"{base}/token?n={n}", headers=headers) as r:
                        await r.read()
                        outcome = (
                            "200"
                            if r.status == 200
                            else f"{r.status} {r.headers.get('x-sluice-reason')}"
                        )
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            results.append((loop.time() - sent, outcome))

        start = loop.time()
        tasks = []
        n = 0
        while (due := start + n / 200.0) < start + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(n)))
            n += 1
        await asyncio.gather(*tasks)
    return results


def report_deadlines(phase: str, results: list[tuple[float, str]], deadline: float) -> None:
    """One phase's answers by outcome and their times against the deadline."""
    times = [t for t, _ in results]
    outcomes: dict[str, int] = {}
    for _, o in results:
        outcomes[o] = outcomes.get(o, 0) + 1
    late = sum(t > deadline for t in times)
    slack = sum(t > deadline + 0.1 for t in times)
    margin = deadline - max(times)
    print(
        f"deadlines  {phase}: {len(results)} requests {dict(sorted(outcomes.items()))}\n"
        f"           answered after {spread(times)}; past the {ms(deadline)} ms deadline: {late} "
        f"(past it + 100 ms: {slack}); the last answer {ms(abs(margin))} ms "
        f"{'before' if margin >= 0 else 'after'} it"
    )


def bench_deadlines(seconds: float) -> None:
    """Sluice and the backend as children: a storm with deadlines against a gate that queues,
    then with the backend SIGKILLed."""
    deadline_ms = 1000
    with tempfile.TemporaryDirectory() as tmp, ProcessGroup(Path(tmp) / "logs") as group:
        bport, badmin = free_port(), free_port()
        backend = group.start(
            "backend",
            [
                "-m",
                "loadtest.backend",
                *("--port", str(bport), "--admin-port", str(badmin)),
                *("--workers", "32", "--service-time", "0.05"),
                *("--max-lifetime", "120", "--parent-pid", str(os.getpid())),
            ],
            cwd=ROOT,
        )
        wait_port(badmin, timeout=20.0)
        sport, sadmin = free_port(), free_port()
        path = write_sluice_config(
            Path(tmp) / "sluice.yaml",
            port=sport,
            upstream_port=bport,
            admin_port=sadmin,
            overrides={
                "upstream": {
                    "read_timeout": "2s",
                    "connect_timeout": "500ms",
                    "probe_interval": "100ms",
                    "probe_interval_normal": "200ms",
                    "probe_timeout": "300ms",
                },
                "lifecycle": {"drain_timeout": "2s"},
                "logging": {"level": "warning"},
                "modes": {
                    "protection": "on",
                    "startup_window": "0s",
                    "min_dwell": "300ms",
                    "error_window": "1s",
                    "outage_min_samples": 5,
                },
                # About 80/s through a ceiling of 4 x 50 ms: a 200/s storm queues behind it.
                "limiter": {"floor": 2, "initial": 4, "ceiling": 4},
                "queue": {"max_size": 200},
                "recovery": {"hold": "500ms", "batch_interval": "400ms"},
                "shedding": {"deadline_margin": "200ms"},
            },
        )
        group.start("sluice", ["-m", "proxy", "--config", str(path)], cwd=ROOT)
        wait_port(sadmin, timeout=20.0)
        base = f"http://127.0.0.1:{sport}"
        busy = asyncio.run(storm(base, seconds, deadline_ms))
        report_deadlines("a gate that queues", busy, deadline_ms / 1000)
        backend.popen.kill()
        backend.popen.wait(10)
        dead = asyncio.run(storm(base, seconds, deadline_ms))
        report_deadlines("the backend SIGKILLed", dead, deadline_ms / 1000)
