"""One scenario's arms, run one after another, and their table, PNG timeline and JSON results
written (`run_scenario`, what every command of `python -m loadtest` runs); the run variants."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .figures import PROTECTED_ARM, render_checks
from .fleet_redis import RedisPlan
from .runner import ARMS, ArmPlan, run_arm_sync
from .scenario import load_scenario

OUT_ROOT = Path(__file__).parent / "out"

# Run variants: timing overrides with a name. `cold`: Sluice starts a few seconds before the
# trigger (it is up ~1.5 s before the fleet's first arrival, then sees COLD_WARMUP s of fresh
# traffic only), so the storm meets a limiter that has learned next to nothing.
COLD_WARMUP = 3.0
VARIANTS: dict[str, dict[str, float]] = {"": {}, "cold": {"warmup": COLD_WARMUP}}


def default_out_dir() -> Path:
    """loadtest/out/<timestamp>/ (git-ignored)."""
    return OUT_ROOT / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_scenario(
    name: str,
    arms: Sequence[str] = ARMS,
    seed: int = 1,
    capacity_scale: float = 1.0,
    profile: str | None = None,
    out_dir: Path | None = None,
    timing: dict[str, float] | None = None,
    write: bool = True,
    echo: bool = True,
    variant: str = "",
    fleet: int = 1,
    lb: str | None = None,
    redis: RedisPlan | None = None,
) -> list[dict[str, Any]]:
    """Run `arms` of scenario `name` one after another; returns each arm's results dict.

    `fleet` and `lb` (issue 18): K backends sharing the scenario's capacity, each with its
    sidecar, behind HAProxy balancing with `lb` (None: no balancer, K must be 1); `redis`:
    whether the sidecars share state on a Redis the harness runs, and a fault to inject.

    `variant` (a key of VARIANTS, e.g. `cold`) applies its timing on top of `timing` and is
    named in the results and file names. With `write`, the table, a PNG timeline and the JSON
    results go to `out_dir`.
    """
    scenario, path = load_scenario(name)
    if profile:
        scenario = scenario.with_profile(profile)
    timing = (timing or {}) | VARIANTS[variant]
    if timing:
        scenario = scenario.with_timing(**timing)
    scenario = scenario.scaled(capacity_scale)
    out_dir = out_dir or default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for arm in arms:
        if echo:
            print(f"[{name}] running arm {arm} ...", flush=True)
        plan = ArmPlan(scenario, path, arm, seed, capacity_scale, out_dir, fleet=fleet, lb=lb)
        plan.redis = redis or RedisPlan()
        res = run_arm_sync(plan)
        if variant:
            res["variant"] = variant
        if "unavailable" in res:  # so its figures line can still name the run
            res.setdefault("capacity_scale", capacity_scale)
            res.setdefault("profile", scenario.clients.profile)
        if echo and "unavailable" in res:
            print(f"[{name}] arm {arm} unavailable: {res['unavailable']}", flush=True)
        elif echo:
            print(
                f"[{name}] arm {arm} done in {res['wall_s']:.0f} s "
                f"({'valid' if res['validity']['valid'] else 'INVALID'})",
                flush=True,
            )
        results.append(res)
    if write:
        write_outputs(results, out_dir, echo=echo)
    return results


def write_outputs(results: list[dict[str, Any]], out_dir: Path, echo: bool = True) -> list[Path]:
    """Table (.txt), timeline (.png) and results (.json) for one scenario's arms."""
    from .plot import plot_scenario
    from .report import render_table

    ran = [r for r in results if "unavailable" not in r]
    stem = results[0]["scenario"]
    if ran and ran[0]["capacity_scale"] != 1:
        stem += f"-x{ran[0]['capacity_scale']:g}"
    if ran and len({r["profile"] for r in ran}) == 1 and ran[0]["profile"] != "":
        stem += f"-{ran[0]['profile']}"
    if ran and ran[0].get("variant"):
        stem += f"-{ran[0]['variant']}"
    table = render_table(results)
    checks = render_checks(results) if any(r["arm"] == PROTECTED_ARM for r in results) else None
    paths = [out_dir / f"{stem}.txt", out_dir / f"{stem}.json"]
    text = table + "\n" + (f"\nfigures of the {PROTECTED_ARM} arm:\n{checks}\n" if checks else "")
    paths[0].write_text(text, encoding="utf-8")
    paths[1].write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    png = plot_scenario(results, out_dir / f"{stem}.png")
    if png is not None:
        paths.append(png)
    if echo:
        print()
        print(table)
        print()
        if checks:
            print(f"figures of the {PROTECTED_ARM} arm:")
            print(checks)
            print()
        print("wrote " + ", ".join(str(p) for p in paths))
    return paths
