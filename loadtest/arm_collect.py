"""What an arm leaves behind once its span is over: the fleet's records, each backend's /stats,
each proxy's /status samples, final /status and (in a fleet arm) /metrics, all kept in the
run's raw/ folder; and the CPU each child used over the span.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .arm_children import ArmUnavailable, Backend, Proxy, get_json
from .arm_fleet import scrape_metrics
from .fleet_spec import merge_outputs
from .lb_analysis import sidecar_counters
from .procs import Child

StatusSamples = dict[str, list[tuple[float, dict[str, Any]]]]


class Watched(NamedTuple):
    """CPU over the measured span, from `t_start` to `t_end`."""

    span: float
    harness: float | None  # this process's CPU seconds
    machine_busy: float  # the machine's busy CPU seconds


async def collect_fleets(fleets: list[tuple[Child, Path]], grace: float) -> dict[str, Any]:
    """The fleet's records once each process has finished (its shards merged)."""
    outs: list[dict[str, Any]] = []
    for fleet, fleet_out in fleets:
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(fleet.popen.wait, grace + 20.0)
        if fleet.alive() or not fleet_out.exists():
            raise ArmUnavailable(f"the fleet did not finish:\n{fleet.log_tail()}")
        outs.append(orjson.loads(fleet_out.read_bytes()))
    return merge_outputs(outs)


async def collect_backends(
    backends: dict[str, Backend], raw_dir: Path, tag: str
) -> dict[str, dict[str, Any]]:
    """Each backend's /stats (raw records included), also kept in `raw_dir`."""
    stats: dict[str, dict[str, Any]] = {}
    for name, backend in backends.items():
        doc = await get_json(backend.admin, "/stats", timeout=10.0)
        if doc is None:
            raise ArmUnavailable(f"no stats from backend {name}")
        stats[name] = doc
        (raw_dir / f"{tag}-backend-{name}.json").write_bytes(orjson.dumps(doc))
    return stats


async def save_status(
    proxies: dict[str, Proxy], samples: StatusSamples, raw_dir: Path, tag: str
) -> dict[str, dict[str, Any]]:
    """Each proxy's /status samples and its final /status, kept in `raw_dir`; the finals
    (a proxy that did not answer is left out)."""
    finals: dict[str, dict[str, Any]] = {}
    for name, proxy in proxies.items():
        final = await get_json(proxy.admin, "/status", timeout=2.0)
        if final is not None:
            finals[name] = final
        (raw_dir / f"{tag}-sluice-{name}-status.json").write_bytes(
            orjson.dumps({"samples": samples[name], "final": final})
        )
    return finals


async def collect_metrics(
    proxies: dict[str, Proxy], raw_dir: Path, tag: str
) -> dict[str, dict[str, Any]]:
    """Each proxy's final /metrics, kept in `raw_dir` as text, and its counters the fleet's
    figures read (lb_analysis.sidecar_counters)."""
    out: dict[str, dict[str, Any]] = {}
    for name, proxy in proxies.items():
        text = await scrape_metrics(proxy.admin)
        if text is None:
            continue
        (raw_dir / f"{tag}-sluice-{name}-metrics.txt").write_text(text, encoding="utf-8")
        out[name] = sidecar_counters(text)
    return out


def cpu_shares(measured: list[Child], tag: str, watched: Watched) -> dict[str, float]:
    """Each measured child's CPU as a share of one core over the span, and the harness's."""
    cpu: dict[str, float] = {}
    for ch in measured:
        if "start" in ch.cpu_marks and "end" in ch.cpu_marks:
            label = ch.name.removeprefix(f"{tag}-")
            cpu[label] = (ch.cpu_marks["end"] - ch.cpu_marks["start"]) / watched.span
    if watched.harness is not None:
        cpu["harness"] = watched.harness / watched.span
    return cpu


def own_cpu() -> float | None:
    """This process's user + system CPU seconds so far."""
    t = os.times()
    return t.user + t.system
