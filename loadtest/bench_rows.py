"""The bench's rows: each configuration under test, started, then measured round after round.

A row is one server between the load and the backend (or none: `direct`), on PROXY_CORE; every
round runs wrk through each row at each connection count (closed loop, with the row's CPU per
request), then the open-loop generator through each (p99 added over direct, measured twice).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .bench_load import measure_cpu, run_open_loop, run_wrk
from .bench_rig import LOAD_CORE, PATH, PROXY_CORE, http_call, start_pinned
from .bench_servers import (
    SluiceProc,
    gate_available,
    start_forwarder,
    start_haproxy,
    start_nginx_backend,
    start_nginx_proxy,
    start_python_backend,
    start_sluice,
)
from .procs import Child, ProcessGroup, free_port, merge_sections, wait_port

INSTALL_HINT = "apt-get install wrk nginx-light haproxy"
ROW_NAMES = (
    "direct",
    "nginx",
    "haproxy",
    "minimal-forwarder",
    "sluice-lean",
    "sluice-aiohttp",
    "sluice-shield",
    "aiohttp-static",
    "aiohttp+lean",
)
# Floors of Sluice's own stack, for reading the figures (closed loop only, not targets):
# aiohttp + uvloop answering a constant 503 (what any refusal costs before Sluice's logic),
# and aiohttp + uvloop + the lean pool forwarding with no Sluice logic (issue 7's experiment).
FLOOR_ROWS = ("aiohttp-static", "aiohttp+lean")
NORMAL_ROWS = ("sluice-lean", "sluice-aiohttp")  # forwarding rows that must not refuse
# Sluice rows run the default config with these changes, all of them for one reason: a
# benchmark that steps from idle to saturation on one core is, to Sluice, a surge of load it
# cannot tell from a storm (and the proxy's own CPU saturation reads as upstream latency), so
# with the defaults it rightly leaves NORMAL and sheds. The NORMAL cost is what is measured,
# so the learned limit is kept above the connection count and the storm detectors are off;
# every request still goes through classify, the gate's admit/release, metrics and ticks.
NORMAL_OVERRIDES: dict[str, dict[str, Any]] = {
    "modes": {"start_in_recovery_if_loaded": False},
    "recovery": {"enter_arrival_ratio": 1e9, "enter_queue_depth": 1_000_000},
    "limiter": {"floor": 512, "initial": 512},
}


@dataclass
class Row:
    """One configuration under test and what it measured."""

    name: str
    port: int = 0
    pid: int | None = None  # process whose CPU is counted (None: direct)
    proc: Child | None = None
    skipped: str | None = None
    cpu_us: dict[int, list[float]] = field(default_factory=dict)
    rps: dict[int, list[float]] = field(default_factory=dict)
    p50: dict[int, list[float]] = field(default_factory=dict)
    p99: dict[int, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ol_p50: list[float] = field(default_factory=list)
    ol_p99: list[float] = field(default_factory=list)
    ol_added: list[float] = field(default_factory=list)


def start_backend(group: ProcessGroup, have: dict[str, bool]) -> int:
    """The backend every row forwards to (nginx, else a Python responder), checked; its port."""
    backend_port = free_port()
    if have["nginx"]:
        backend = start_nginx_backend(group, backend_port)
        backend_desc = "nginx 1 worker, static ~200-byte JSON, keep-alive unlimited"
    else:
        backend = start_python_backend(group, backend_port)
        backend_desc = "raw asyncio responder (nginx missing), static JSON"
    wait_port(backend_port, alive=backend.alive)
    status, body = http_call(backend_port, path=PATH)
    if status != 200 or not body.startswith(b'{"access_token"'):
        raise RuntimeError(f"backend answered {status} {body[:100]!r}")
    print(f"backend: {backend_desc} ({len(body)} bytes), core {LOAD_CORE}")
    return backend_port


def start_row(
    name: str,
    args: argparse.Namespace,
    group: ProcessGroup,
    have: dict[str, bool],
    backend_port: int,
    sluices: dict[str, SluiceProc],
) -> Row:
    """Row `name` with its server started (not yet listening), or skipped with the reason;
    a Sluice row is also added to `sluices`."""
    row = Row(name)
    if name == "direct":
        row.port = backend_port
        return row
    if name in ("nginx", "haproxy") and not have[name]:
        row.skipped = f"{name} not installed ({INSTALL_HINT})"
        return row
    if name == "sluice-shield" and not gate_available():
        row.skipped = "gate not available (proxy/admission/gate.py missing)"
        return row
    port = free_port()
    proc: Child
    if name == "nginx":
        proc = start_nginx_proxy(group, port, backend_port)
    elif name == "haproxy":
        proc = start_haproxy(group, port, backend_port)
    elif name == "minimal-forwarder":
        proc = start_forwarder(group, port, backend_port)
    elif name in FLOOR_ROWS:
        argv = [sys.executable, "-m", "loadtest.bench", "--floor-server", name]
        argv += ["--floor-port", str(port), "--floor-backend", str(backend_port)]
        proc = start_pinned(group, name, argv, PROXY_CORE)
    else:
        client = "aiohttp" if name == "sluice-aiohttp" else "lean"
        extra = merge_sections({} if args.default_config else NORMAL_OVERRIDES, args.sluice_extra)
        sp = start_sluice(group, name, backend_port, client, extra)
        sluices[name] = sp
        proc, port = sp.proc, sp.port
    row.port, row.pid, row.proc = port, proc.pid, proc
    return row


def wait_rows(rows: list[Row], sluices: dict[str, SluiceProc]) -> None:
    """Until every started row listens (a Sluice row's admin listener too); a row whose
    server does not is skipped with the end of its log."""
    for row in rows:
        if row.skipped or row.name == "direct":
            continue
        proc = row.proc
        assert proc is not None
        try:
            wait_port(row.port, alive=proc.alive)
            if row.name in sluices:
                wait_port(sluices[row.name].admin, alive=proc.alive)
        except RuntimeError as exc:
            row.skipped = f"did not start: {exc}: {proc.log_tail(1)[-300:]}"
            sluices.pop(row.name, None)


def warm_up(rows: list[Row], conns: Sequence[int], seconds: float) -> None:
    """wrk through every started row at the most connections: connections, caches and the
    learned limit warmed up; not recorded."""
    for row in rows:
        if not row.skipped:
            run_wrk(row.port, max(conns), seconds)


def closed_loop_round(live: list[Row], conns: Sequence[int], duration: float, rnd: int) -> None:
    """One round of wrk through every live row at each connection count, with the CPU per
    request of the row's process; failures noted (refusals are the point of two rows)."""
    for row in live:
        for c in conns:
            result, cpu = measure_cpu(row.pid, functools.partial(run_wrk, row.port, c, duration))
            row.rps.setdefault(c, []).append(result.rps)
            row.p50.setdefault(c, []).append(result.p50_ms)
            row.p99.setdefault(c, []).append(result.p99_ms)
            if cpu is not None:
                row.cpu_us.setdefault(c, []).append(cpu)
            refuses = row.name in ("sluice-shield", "aiohttp-static")
            bad = 0 if refuses else result.non_2xx
            if bad or result.errors:
                row.notes.append(
                    f"round {rnd + 1}, {c} conns: {result.non_2xx} non-2xx, "
                    f"{result.errors} socket errors of {result.requests}"
                )


def open_loop_round(
    rows: list[Row], live: list[Row], rate: float, seconds: float, rnd: int
) -> None:
    """One round of the open-loop generator through every live row but the floors, then
    direct again (the noise floor, kept as the row `direct (again)`); p99 added over direct."""
    direct = next((r for r in live if r.name == "direct"), None)
    order = [r for r in live if r.name not in FLOOR_ROWS]
    if direct is not None:
        order.append(direct)
    base: float | None = None
    again = Row("direct (again)") if direct is not None else None
    for i, row in enumerate(order):
        res = run_open_loop(row.port, rate, seconds)
        target = again if (row is direct and i > 0 and again is not None) else row
        target.ol_p50.append(res["p50_ms"])
        target.ol_p99.append(res["p99_ms"])
        if row is direct and i == 0:
            base = res["p99_ms"]
        if base is not None:
            target.ol_added.append(res["p99_ms"] - base)
        if res["failures"] or res["achieved_rps"] < 0.95 * rate:
            target.notes.append(
                f"open loop round {rnd + 1}: {res['failures']} failures, "
                f"{res['achieved_rps']:.0f} req/s achieved"
            )
    if again is not None:
        if rnd == 0:
            rows.append(again)
        else:
            kept = next(r for r in rows if r.name == "direct (again)")
            kept.ol_p50 += again.ol_p50
            kept.ol_p99 += again.ol_p99
            kept.ol_added += again.ol_added


def own_answers(rows: list[Row], sluices: dict[str, SluiceProc]) -> dict[str, dict[str, int]]:
    """Each running Sluice's own answers by reason; its mode at the end noted on its row."""
    own: dict[str, dict[str, int]] = {}
    for name, sp in sluices.items():
        if sp.proc.alive():
            mode = sp.status().get("mode")
            own[name] = sp.own_answers()
            row = next(r for r in rows if r.name == name)
            row.notes.append(f"mode at the end: {mode}")
    return own
