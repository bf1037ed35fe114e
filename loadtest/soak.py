"""Soak: a Sluice process under mixed load with periodic storms, SIGHUP reloads and hostile
input, watched for growth (`make soak`; not part of `make test`).

    python -m loadtest.soak [--minutes 10] [--cycle 30] [--base-rps 80] [--storm-rps 500]

Three processes on 127.0.0.1: a small backend of fixed capacity (its own, in this file:
`--workers` slots of `--service-ms`, so a storm is past its capacity and the gate has to
queue and shed), Sluice with protection on, and this load generator. Each cycle:

    0 ─ base load ─ storm starts (45 %) ─ SIGHUP (55 %) ─ storm ends (65 %) ─ base ─ sample (98 %)

The storm adds unknown callers by the thousand, retries (attempt headers and repeats),
deadlines and small bodies; every cycle also sends malformed requests and opens slowloris
connections. At the same phase of every cycle (98 %, after the storm has drained) the proxy's
resident memory (VmRSS) and open file descriptors are sampled; the run ends with errors by
kind and the verdict: RSS at the last cycle within 5 % of the second cycle's.

Everything is bounded: the generator never has more than `--max-outstanding` requests open
(an arrival over that is counted as `client-skipped`, not queued), every request has a 10 s
timeout, and the run ends after `--minutes`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from .procs import (
    Child,
    ProcessGroup,
    cpu_seconds,
    free_port,
    rss_mb,
    wait_port,
    write_sluice_config,
)
from .soak_load import KNOWN_CALLERS, REQUEST_TIMEOUT, Load, Tally

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_AT = 0.98  # phase of the cycle at which RSS and fds are read
STORM = (0.45, 0.65)
HUP_AT = 0.55


# --- the backend (a separate process: `--serve-backend PORT`) ----------------------------------
def serve_backend(port: int, workers: int, service_ms: float) -> None:
    """Fixed capacity: `workers` concurrent requests of `service_ms`, the rest wait in line."""
    slots = asyncio.Semaphore(workers)
    rng = random.Random(7)

    async def token(request: web.Request) -> web.StreamResponse:
        await request.read()
        async with slots:
            await asyncio.sleep(service_ms / 1000 * rng.uniform(0.8, 1.2))
        return web.json_response({"access_token": "x" * 64, "expires_in": 3600})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", token)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


# --- helpers -----------------------------------------------------------------------------------
def proc_figures(pid: int) -> tuple[float, int, float]:
    """(RSS in MB, open file descriptors, CPU seconds) of a process, from /proc."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    cpu = cpu_seconds(pid)
    return rss_mb(pid), fds, float("nan") if cpu is None else cpu


def wait_listening(port: int, child: Child, what: str) -> None:
    """Until `child` accepts on `port`; SystemExit with its log when it exits or never does."""
    try:
        wait_port(port, timeout=15.0, alive=child.alive)
    except RuntimeError:
        if child.alive():
            raise SystemExit(f"{what} did not start") from None
        log = child.log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{what} exited early:\n{log}") from None


def write_config(path: Path, port: int, admin_port: int, backend_port: int, variant: int) -> None:
    """The proxy's config; reloads alternate between two variants so each SIGHUP changes it."""
    write_sluice_config(
        path,
        port=port,
        upstream_port=backend_port,
        admin_port=admin_port,
        overrides=sluice_overrides(variant),
    )


def sluice_overrides(variant: int) -> dict[str, dict[str, Any]]:
    """The proxy's config beyond its ports (see `write_config`)."""
    return {
        "listen": {"header_read_timeout": "2s"},
        "upstream": {"read_timeout": "5s", "pool_size": 128},
        "admin": {"token_env": "SLUICE_SOAK_TOKEN"},
        "modes": {"protection": "on"},
        "callers": {
            "known": [
                {"name": KNOWN_CALLERS[0], "cap": 64},
                {"name": KNOWN_CALLERS[1], "cap": 64},
                {"name": KNOWN_CALLERS[2], "priority": "critical"},
            ],
            "fair_buckets": 16,
        },
        # Small enough to fill in the first storm: the samples then show leaks, not the
        # warm-up of a bounded cache (the default, 65536, fills over several cycles).
        "retry_detect": {"fingerprint_cache_size": 4000},
        "queue": {"max_size": 2000, "max_wait": "5s"},
        "limiter": {"ceiling": 400 if variant % 2 == 0 else 300},
        "logging": {"level": "warning"},
        "lifecycle": {"drain_timeout": "5s"},
    }


@dataclass
class Procs:
    """The backend and Sluice subprocesses, their ports, config and logs."""

    tmp: Path
    port: int
    admin_port: int
    backend_port: int
    config_path: Path
    group: ProcessGroup
    backend: Child
    sluice: Child

    def write_config(self, variant: int) -> None:
        """Write the proxy's config (variant `variant`) where it reads it on SIGHUP."""
        write_config(self.config_path, self.port, self.admin_port, self.backend_port, variant)

    def log_tail(self) -> str:
        """The end of Sluice's output."""
        return self.sluice.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop Sluice and the backend (Sluice drains for up to 5 s on SIGTERM)."""
        self.group.stop_all(timeout=10.0)


def start_processes(args: argparse.Namespace) -> Procs:
    """The backend and Sluice, each listening, with logs and config in a fresh temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    port, admin_port, backend_port = free_port(), free_port(), free_port()
    env = {"SLUICE_SOAK_TOKEN": "soak-token"}
    group = ProcessGroup(tmp)
    backend_args = ["-m", "loadtest.soak", "--serve-backend", str(backend_port)]
    backend_args += ["--workers", str(args.workers), "--service-ms", str(args.service_ms)]
    backend = group.start("backend", backend_args, env=env, cwd=ROOT)
    config_path = tmp / "sluice.yaml"
    write_config(config_path, port, admin_port, backend_port, 0)
    sluice = group.start("sluice", ["-m", "proxy", "--config", str(config_path)], env, ROOT)
    procs = Procs(tmp, port, admin_port, backend_port, config_path, group, backend, sluice)
    try:
        wait_listening(backend_port, backend, "backend")
        wait_listening(admin_port, sluice, "sluice")
    except BaseException:
        procs.stop()
        raise
    return procs


async def drive(args: argparse.Namespace, procs: Procs) -> int:
    """The soak's cycles, then the reloads counted, Sluice stopped and the verdict printed;
    the exit code."""
    sluice = procs.sluice.popen
    tally = Tally()
    load = Load(procs.port, args, tally)
    cycles = max(3, round(args.minutes * 60 / args.cycle))
    print(
        f"soak: {cycles} cycles of {args.cycle:g}s; base {args.base_rps} rps, storm +"
        f"{args.storm_rps} rps; backend {args.workers} x {args.service_ms:g} ms "
        f"(~{args.workers * 1000 / args.service_ms:.0f} rps); sluice pid {sluice.pid}"
    )
    print(f"{'cycle':>5} {'rss MB':>8} {'fds':>5} {'cpu s':>7} {'sent':>7}  answers this cycle")
    print("      (rss and fds of the proxy at 98 % of each cycle; cpu s: its total CPU time)")
    samples: list[tuple[float, int]] = []
    hups = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=args.max_outstanding, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        load.session = session
        for cycle in range(1, cycles + 1):
            done = await _cycle(args, procs, load, cycle)
            if done is None:
                print(f"sluice exited with {sluice.returncode} mid-run")
                return 1
            hups += done.hupped
            if done.sample is not None:
                samples.append(done.sample)
        if load.tasks:
            await asyncio.wait(load.tasks, timeout=REQUEST_TIMEOUT + 5)
        async with session.get(f"http://127.0.0.1:{procs.admin_port}/metrics") as r:
            metrics = await r.text()
    reloads = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('sluice_config_reloads_total{result="ok"}')
    )
    sluice.send_signal(signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, sluice.wait, 30)
    return _verdict(tally, samples, hups, reloads, code, procs)


class _Cycle(NamedTuple):
    """What one cycle did: whether it reloaded Sluice, and its (RSS MB, fds) sample."""

    hupped: bool
    sample: tuple[float, int] | None


async def _cycle(args: argparse.Namespace, procs: Procs, load: Load, cycle: int) -> _Cycle | None:
    """One cycle: arrivals at the base rate (plus the storm's in its phase), malformed input,
    the SIGHUP reload at HUP_AT, the sample at SAMPLE_AT (printed with the cycle's answers);
    None if Sluice exited."""
    sluice = procs.sluice.popen
    tally = load.tally
    tick = 0.01
    start = time.monotonic()
    before = Counter(tally.kinds)
    sent_before = tally.sent
    credit = bad_due = 0.0
    hupped = False
    sample: tuple[float, int] | None = None
    while (phase := (time.monotonic() - start) / args.cycle) < 1:
        storm = STORM[0] <= phase < STORM[1]
        credit += (args.base_rps + (args.storm_rps if storm else 0)) * tick
        while credit >= 1:
            credit -= 1
            load.spawn(load.request(storm))
        bad_due += args.bad_rps * tick
        while bad_due >= 1:
            bad_due -= 1
            load.spawn(load.bad_input())
        if not hupped and phase >= HUP_AT:
            procs.write_config(cycle)
            sluice.send_signal(signal.SIGHUP)
            hupped = True
        if sample is None and phase >= SAMPLE_AT:
            rss, fds, cpu = proc_figures(sluice.pid)
            sample = (rss, fds)
            delta = tally.kinds - before
            shown = ", ".join(f"{k}: {v}" for k, v in delta.most_common())
            sent = tally.sent - sent_before
            print(f"{cycle:>5} {rss:>8.1f} {fds:>5} {cpu:>7.1f} {sent:>7}  {shown}")
        if sluice.poll() is not None:
            return None
        await asyncio.sleep(tick)
    return _Cycle(hupped, sample)


def _verdict(
    tally: Tally,
    samples: list[tuple[float, int]],
    hups: int,
    reloads: float,
    code: int,
    procs: Procs,
) -> int:
    """Answers and errors by kind, RSS growth from the second cycle to the last; PASS (0) when
    RSS stayed within 5 %, nothing was unexplained, Sluice exited cleanly and every SIGHUP
    reloaded."""
    print("\nanswers and errors by kind (whole run):")
    for kind, n in tally.kinds.most_common():
        flag = "  <- unexplained" if kind in tally.unexplained else ""
        print(f"  {n:>8}  {kind}{flag}")
    unexplained = sum(tally.unexplained.values())
    second, last = samples[1][0], samples[-1][0]
    growth = (last - second) / second * 100
    print(
        f"\nrequests sent {tally.sent}; SIGHUPs {hups}, reloads ok {reloads:.0f}; "
        f"sluice exit code {code}"
    )
    print(
        f"RSS cycle 2 {second:.1f} MB -> last {last:.1f} MB ({growth:+.2f} %); "
        f"fds cycle 2 {samples[1][1]} -> last {samples[-1][1]}"
    )
    print(f"unexplained errors: {unexplained}")
    ok = abs(growth) <= 5.0 and unexplained == 0 and code == 0 and reloads == hups
    print("verdict: " + ("PASS" if ok else "FAIL") + " (RSS within 5 %, no unexplained errors)")
    if not ok:
        print(f"sluice log tail:\n{procs.log_tail()}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Command line of `python -m loadtest.soak` (also its backend child)."""
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="run length (default 10)")
    p.add_argument("--cycle", type=float, default=30.0, help="seconds per storm cycle")
    p.add_argument("--base-rps", type=float, default=80.0)
    p.add_argument("--storm-rps", type=float, default=500.0)
    p.add_argument("--bad-rps", type=float, default=2.0, help="malformed + slowloris per second")
    p.add_argument("--max-outstanding", type=int, default=400)
    p.add_argument("--workers", type=int, default=8, help="backend concurrency")
    p.add_argument("--service-ms", type=float, default=20.0, help="backend service time")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.serve_backend:
        serve_backend(args.serve_backend, args.workers, args.service_ms)
        return 0
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    procs = start_processes(args)
    try:
        with runner:
            return runner.run(drive(args, procs))
    finally:
        procs.stop()
        print(f"logs: {procs.tmp}")


if __name__ == "__main__":
    sys.exit(main())
