"""`make bench`: CPU time per request of Sluice against nginx, HAProxy and a minimal forwarder.

    python -m loadtest.bench [--quick] [--rounds 3] [--duration 4] [--rows direct,sluice-lean]

Issue 7's benchmark (a script, not a test). The machine has two cores, so throughput alone
mostly says who shares a core with whom; the primary figure is the CPU time of the proxy
process (utime + stime from /proc/<pid>/stat over the run, summed over nginx's and HAProxy's
processes) divided by the requests it served.

- Backend: nginx, 1 worker, answering every path with a static ~200-byte JSON token, keep-alive
  unlimited. It shares core 0 with the load generators (taskset); the proxy under test runs
  alone on core 1.
- Rows, interleaved in every round (so drift on a shared machine hits them all), medians with
  min-max over the rounds: direct; nginx as a proxy (1 worker, upstream keep-alive pool larger
  than the connection count); HAProxy (nbthread 1, `http-reuse always`); the minimal forwarder
  (loadtest/minimal_forwarder.py); Sluice forwarding in NORMAL mode with the lean upstream
  client and with aiohttp's; Sluice refusing every request (SHIELD).
- Load: wrk (closed loop) at 64 and 256 connections -> requests/s, wrk's latency, CPU per
  request; then an open-loop generator at a fixed rate through each row (with a second direct
  row: the noise floor) -> p50/p99 and p99 added over direct.
- Memory: resident size of a Sluice holding 10,000 clients waiting (RECOVERY, backend that
  sleeps), sampled when the `sluice_queue_depth` gauges sum to 10,000.

Every request is the same request line from one address and carries no attempt header: identical
requests, as every pod of one identity sends them. Sluice must take them for first tries (a
repeat after a success is not a retry), so a Sluice row in NORMAL against this healthy backend
may not answer a single request itself: the table shows Sluice's own answers, and the run exits
1 if a NORMAL row has any. Loopback only; every child process is stopped on exit, error or
Ctrl-C.

Modules: bench_rig (cores, the request, pinned children), bench_servers (what each row runs),
bench_rows (the rows: started, measured round after round), bench_load (wrk, the open-loop
generator, CPU per request), bench_memory (10,000 waiting), bench_report (the tables and
targets), and this one (the run and the command line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .bench_load import open_loop
from .bench_memory import memory_test
from .bench_report import (
    print_open_loop_table,
    print_own_answers,
    print_targets,
    print_wrk_table,
)
from .bench_rig import LOAD_CORE, PROXY_CORE, ROOT
from .bench_rows import (
    FLOOR_ROWS,
    INSTALL_HINT,
    NORMAL_OVERRIDES,
    ROW_NAMES,
    Row,
    closed_loop_round,
    open_loop_round,
    own_answers,
    start_backend,
    start_row,
    wait_rows,
    warm_up,
)
from .bench_servers import SluiceProc, run_floor_server, run_slow_backend
from .procs import ProcessGroup, interrupt_on_termination

CONNS = (64, 256)  # wrk's connection counts


def bench(args: argparse.Namespace) -> int:
    """The whole benchmark; returns the exit code."""
    t0 = time.monotonic()
    have = {tool: shutil.which(tool) is not None for tool in ("wrk", "nginx", "haproxy")}
    if not _machine_fits():
        return 2
    wanted = set(args.rows.split(",")) if args.rows else set(ROW_NAMES)
    _print_setup(args, have)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        group = ProcessGroup(Path(tmp))
        interrupt_on_termination()  # SIGTERM too: the teardown in `finally` always runs
        try:
            return _bench_body(args, group, have, wanted, CONNS, t0)
        except KeyboardInterrupt:
            print("interrupted: tearing down")
            return 130
        finally:
            group.stop_all()


def _machine_fits() -> bool:
    """taskset and two cores are there (else says why); the open-file limit raised to its
    hard limit, for the 10,000 held clients and wrk's connections."""
    if shutil.which("taskset") is None:
        print("taskset missing (util-linux): cannot pin; aborting")
        return False
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        print("needs at least 2 cores (load on core 0, proxy on core 1)")
        return False
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return True


def _print_setup(args: argparse.Namespace, have: dict[str, bool]) -> None:
    """What runs where, on which code and machine, with which Sluice config and tools."""
    print(
        f"Sluice bench (issue 7): {args.rounds} round(s), wrk {args.duration:g}s per run at "
        f"{'/'.join(map(str, CONNS))} connections, open loop {args.rate:g} req/s for "
        f"{args.ol_duration:g}s"
    )
    print(
        f"pinning: backend + wrk + open-loop generator on core {LOAD_CORE}; the proxy under "
        f"test alone on core {PROXY_CORE} (taskset). Loopback only."
    )
    print(f"code: {_revision()}, Python {sys.version.split()[0]}")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} at start; other sessions "
        "share these cores, so figures are noisy (medians of rounds, min-max beside)"
    )
    if args.default_config:
        print("Sluice rows: the default config (expect it to leave NORMAL under this load)")
    else:
        changes = ", ".join(
            f"{sec}.{k}={v:g}" if isinstance(v, float) else f"{sec}.{k}={v}"
            for sec, vals in NORMAL_OVERRIDES.items()
            for k, v in vals.items()
        )
        print(
            "Sluice rows: default config + upstream.client, and, so a step from idle to "
            f"saturation stays NORMAL (not read as a storm): {changes}"
        )
    if args.sluice_extra:
        print(f"Sluice overrides from the command line: {args.sluice_extra}")
    for tool, ok in have.items():
        if not ok:
            print(f"{tool} not found: its rows are skipped (install: {INSTALL_HINT})")
    if not have["wrk"]:
        print("without wrk there is no closed-loop table (CPU per request); open loop only")


def _revision() -> str:
    """The commit measured, and whether proxy/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown revision"
    if not head:
        return "unknown revision (not a git checkout)"
    return f"commit {head}" + (" + uncommitted changes in proxy/" if dirty else "")


def _bench_body(
    args: argparse.Namespace,
    group: ProcessGroup,
    have: dict[str, bool],
    wanted: set[str],
    conns: Sequence[int],
    t0: float,
) -> int:
    """Start every row, measure them round after round, print the tables; the exit code."""
    backend_port = start_backend(group, have)
    rows: list[Row] = []
    sluices: dict[str, SluiceProc] = {}
    for name in ROW_NAMES:
        if name in wanted:
            rows.append(start_row(name, args, group, have, backend_port, sluices))
    wait_rows(rows, sluices)
    if "sluice-shield" in sluices:
        result = sluices["sluice-shield"].command({"mode": "shield", "ttl": 600})
        print(f"sluice-shield: POST /mode shield ttl 600 -> mode {result['mode']}")

    if have["wrk"]:
        warm_up(rows, conns, args.warmup)

    live = [r for r in rows if not r.skipped]
    for rnd in range(args.rounds):
        if have["wrk"]:
            closed_loop_round(live, conns, args.duration, rnd)
        open_loop_round(rows, live, args.rate, args.ol_duration, rnd)
        print(f"round {rnd + 1}/{args.rounds} done at {time.monotonic() - t0:.0f}s")
    own = own_answers(rows, sluices)
    # Memory: 10,000 clients held waiting.
    memory = memory_test(group, args) if args.memory else None
    failed = _print_results(args, rows, conns, have, own, memory)
    load = os.getloadavg()
    print(
        f"\nload average {load[0]:.2f} at the end; whole run {time.monotonic() - t0:.0f}s; "
        "figures vary with what else runs on the two cores"
    )
    return 1 if failed else 0


def _print_results(
    args: argparse.Namespace,
    rows: list[Row],
    conns: Sequence[int],
    have: dict[str, bool],
    own: dict[str, dict[str, int]],
    memory: dict[str, Any] | None,
) -> bool:
    """The tables, the memory line and the targets; True when a NORMAL row answered itself."""
    print()
    if have["wrk"]:
        print("Closed loop (wrk): requests/s and CPU time per request of the proxy process,")
        print("median (min-max) over rounds; x fwd = ratio to the minimal forwarder's CPU/req")
        print_wrk_table([r for r in rows if r.name != "direct (again)"], conns)
        print()
    print(f"Open loop at {args.rate:g} req/s ({args.ol_duration:g}s per row per round):")
    print_open_loop_table(rows, args.rate)
    print()
    if memory is not None:
        print(memory["text"])
        print()
    print_targets(rows, conns, memory)
    return print_own_answers(own, checked=not args.default_config)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (also the open-loop, slow-backend and floor-server children)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.slow_backend:
        run_slow_backend(args.slow_backend)
        return 0
    if args.floor_server:
        run_floor_server(args.floor_server, args.floor_port, args.floor_backend)
        return 0
    if args.open_loop:
        import uvloop

        result = uvloop.run(open_loop(args.open_loop, args.rate, args.ol_duration))
        print(json.dumps(result))
        return 0
    if args.quick:
        args.rounds, args.duration, args.warmup, args.ol_duration = 1, 2.0, 1.0, 2.0
    args.sluice_extra = {}
    for item in args.sluice_set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        args.sluice_extra.setdefault(section, {})[name] = yaml.safe_load(value)
    return bench(args)


def _parser() -> argparse.ArgumentParser:
    """The bench's flags; the hidden ones start its children."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, shorter runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk per row first")
    parser.add_argument("--rate", type=float, default=2000.0, help="open-loop requests/s")
    parser.add_argument("--ol-duration", type=float, default=3.0, help="open-loop seconds")
    parser.add_argument("--rows", default="", help=f"comma list of {','.join(ROW_NAMES)}")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument(
        "--default-config",
        action="store_true",
        help="Sluice rows without the NORMAL-keeping overrides (shows the storm detection)",
    )
    parser.add_argument(
        "--sluice-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=YAML",
        help="override a Sluice config value (all Sluice rows), e.g. limiter.initial=512",
    )
    parser.add_argument("--open-loop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slow-backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor-server", choices=FLOOR_ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--floor-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor-backend", type=int, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
