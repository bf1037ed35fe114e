"""The bench's load: wrk (closed loop) and a fixed-rate generator (open loop), both on LOAD_CORE,
and the CPU time per request of the proxy process over a run."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .bench_rig import BENCH_HEADERS, LOAD_CORE, PATH, ROOT
from .procs import tree_cpu_seconds


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by nearest rank (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class WrkResult:
    """What one wrk run reported."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> WrkResult:
    """Requests, duration, rate, latency percentiles and failures from wrk --latency output."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, seconds = int(m.group(1)), _ms(m.group(2) + m.group(3)) / 1000
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests,
        seconds,
        float(rps.group(1)) if rps else requests / seconds,
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run_wrk(port: int, conns: int, seconds: float) -> WrkResult:
    """wrk, one thread on LOAD_CORE, `conns` keep-alive connections."""
    argv = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s"]
    argv += ["--latency", "--timeout", "5s"]
    for k, v in BENCH_HEADERS:
        argv += ["-H", f"{k}: {v}"]
    argv.append(f"http://127.0.0.1:{port}{PATH}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(out.stdout)


async def open_loop(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """Fixed-rate arrivals (never waiting for answers); latency from each request's send."""
    from loadtest.httpclient import Pool  # the harness's lean keep-alive client (read-only)

    loop = asyncio.get_running_loop()
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    pool = Pool("127.0.0.1", port)
    await pool.prewarm(32)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(record: bool) -> None:
        nonlocal failures
        sent = clock()
        try:
            resp = await pool.request("GET", PATH, BENCH_HEADERS, timeout=5.0)
        except Exception:
            failures += record
            return
        if record:
            latencies.append(clock() - sent)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1

    warm = int(rate * 0.5)  # half a second of warm-up, not recorded
    total = warm + int(rate * seconds)
    start = loop.time() + 0.01
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(i >= warm))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    achieved = (total - warm) / max(1e-9, loop.time() - start - warm / rate)
    pool.close()
    return {
        "n": len(latencies),
        "failures": failures,
        "statuses": statuses,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "achieved_rps": achieved,
    }


def run_open_loop(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """The open-loop generator in a child on LOAD_CORE (uvloop); its JSON result."""
    argv = ["taskset", "-c", str(LOAD_CORE), sys.executable, "-m", "loadtest.bench"]
    argv += ["--open-loop", str(port), "--rate", str(rate), "--ol-duration", str(seconds)]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 40, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"open-loop generator failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_cpu(pid: int | None, fn: Callable[[], WrkResult]) -> tuple[WrkResult, float | None]:
    """Run `fn` and return its result with the CPU µs per request of `pid` over it."""
    before = tree_cpu_seconds(pid) if pid else 0.0
    result = fn()
    if not pid or not result.requests:
        return result, None
    return result, (tree_cpu_seconds(pid) - before) / result.requests * 1e6
