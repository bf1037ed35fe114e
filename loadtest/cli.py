"""`python -m loadtest`: run a scenario's arms, print the table, write the PNG and JSON.

python -m loadtest --scenario reopen [--arm direct|passthrough|sluice|all] [--seed S]
                   [--out DIR] [--capacity-scale X] [--profile P]
python -m loadtest demo        # what `make demo` runs
python -m loadtest list        # the shipped scenarios
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .procs import interrupt_on_termination
from .profiles import PROFILE_NAMES
from .runner import ARMS, ArmPlan, run_arm_sync
from .scenario import ScenarioError, list_scenarios, load_scenario

OUT_ROOT = Path(__file__).parent / "out"
DEMO_SCENARIOS: tuple[str, ...] = ("reopen",)
# After the three arms with the scenario's naive clients (the metastability proof), the same
# storm through Sluice with SDK-like clients that honour Retry-After: the backlog drains.
DEMO_DRAIN_PROFILE = "sdk"


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
) -> list[dict[str, Any]]:
    """Run `arms` of scenario `name` one after another; returns each arm's results dict.

    With `write`, the table, a PNG timeline and the JSON results go to `out_dir`.
    """
    scenario, path = load_scenario(name)
    if profile:
        scenario = scenario.with_profile(profile)
    if timing:
        scenario = scenario.with_timing(**timing)
    scenario = scenario.scaled(capacity_scale)
    out_dir = out_dir or default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for arm in arms:
        if echo:
            print(f"[{name}] running arm {arm} ...", flush=True)
        plan = ArmPlan(scenario, path, arm, seed, capacity_scale, out_dir)
        res = run_arm_sync(plan)
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
    table = render_table(results)
    paths = [out_dir / f"{stem}.txt", out_dir / f"{stem}.json"]
    paths[0].write_text(table + "\n", encoding="utf-8")
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
        print("wrote " + ", ".join(str(p) for p in paths))
    return paths


def demo(out_dir: Path | None = None, seed: int = 1) -> int:
    """`make demo`: the reopen scenario in all three arms, then its sluice arm with SDK-like
    clients (about two and a half minutes)."""
    out_dir = out_dir or default_out_dir()
    started = time.monotonic()
    print(
        "Sluice incident replay: a blocked backlog reopens over a token backend.\n"
        "Arms: direct (no proxy), passthrough (Sluice, protection off), sluice (protection on).\n"
        f"Output: {out_dir}\n",
        flush=True,
    )
    for name in DEMO_SCENARIOS:
        run_scenario(name, ARMS, seed=seed, out_dir=out_dir)
        print(
            f"\nThe same storm through Sluice with '{DEMO_DRAIN_PROFILE}' clients (they honour "
            "Retry-After): every backlog workflow should drain within the bound.\n",
            flush=True,
        )
        run_scenario(name, ("sluice",), seed=seed, profile=DEMO_DRAIN_PROFILE, out_dir=out_dir)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; results in {out_dir}")
    others = [s for s in list_scenarios() if s not in DEMO_SCENARIOS]
    if others:
        print("more: " + "; ".join(f"python -m loadtest --scenario {s} --arm all" for s in others))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Incident replay: run a scenario with and without Sluice, side by side.",
    )
    p.add_argument("command", nargs="?", choices=("run", "demo", "list"), default="run")
    p.add_argument("--scenario", "-s", help="scenario name (loadtest/scenarios/NAME.yaml)")
    p.add_argument("--arm", default="all", choices=(*ARMS, "all"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default loadtest/out/<ts>)"
    )
    p.add_argument("--capacity-scale", type=float, default=1.0, help="\u00d7 the backend's workers")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="override the clients")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the trigger")
    p.add_argument("--observe", type=float, default=None, help="seconds observed after t0")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m loadtest`."""
    args = _parser().parse_args(argv)
    interrupt_on_termination()
    if args.command == "list":
        for name in list_scenarios():
            scenario, _ = load_scenario(name)
            summary = scenario.description.strip().splitlines()[0] if scenario.description else ""
            print(f"{name:16s} {summary}")
        return 0
    if args.command == "demo":
        try:
            return demo(args.out, args.seed)
        except KeyboardInterrupt:
            print("\ninterrupted; every process started for the run was stopped", file=sys.stderr)
            return 130
    if not args.scenario:
        print("give --scenario NAME (or `demo` / `list`)", file=sys.stderr)
        return 2
    if args.capacity_scale <= 0:
        print("--capacity-scale must be > 0", file=sys.stderr)
        return 2
    timing = {}
    if args.warmup is not None:
        timing["warmup"] = args.warmup
    if args.observe is not None:
        timing["observe"] = args.observe
    arms = ARMS if args.arm == "all" else (args.arm,)
    try:
        results = run_scenario(
            args.scenario,
            arms,
            seed=args.seed,
            capacity_scale=args.capacity_scale,
            profile=args.profile,
            out_dir=args.out,
            timing=timing or None,
        )
    except ScenarioError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; every process started for the run was stopped", file=sys.stderr)
        return 130
    return 0 if all("unavailable" not in r for r in results) else 1
