"""`python -m loadtest`: the command line, each command dispatched (a scenario's arms:
`scenario_run.py`; `demo.py`, `figures_matrix.py`, `sweep.py`, `fleet_cli.py`).

python -m loadtest --scenario reopen [--arm direct|passthrough|sluice|all] [--seed S]
                   [--out DIR] [--capacity-scale X] [--profile P] [--cold | --warmup S]
python -m loadtest demo        # what `make demo` runs
python -m loadtest figures [--scenarios A,B] [--profiles P,Q] [--scales 1,2]
                               # the acceptance matrix, sluice arm only, PASS/FAIL per figure
python -m loadtest sweep [--runs 40 | --seeds 1-4] [--sluice-config FILE] [--draws-only]
                               # the seeded storm sweep (issue 16; loadtest/sweep.py)
python -m loadtest list        # the shipped scenarios
python -m loadtest --scenario reopen --fleet 3 [--lb roundrobin|leastconn] [--arm sluice]
                               # K backends, K sidecars, HAProxy in front (issue 18)
python -m loadtest fleet-table --fleet 1,3,5 --lb roundrobin,leastconn [--fleet-redis]
python -m loadtest --scenario reopen --fleet 3 --lb roundrobin --fleet-redis \
                   [--redis-kill-at 3 --redis-restart-after 5]   # shared state, a Redis fault
                   --scenarios reopen,backend-outage --profiles sdk,naive [--arms sluice]
                               # the K table (loadtest/fleet_table.py)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .demo import demo
from .figures_matrix import figures
from .procs import interrupt_on_termination
from .profiles import PROFILE_NAMES
from .runner import ARMS
from .scenario import ScenarioError, list_scenarios, load_scenario
from .scenario_run import COLD_WARMUP, default_out_dir
from .scenario_run import run_scenario as run_scenario  # fleet_table imports it from here


def _comma_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give a comma-separated list")
    return items


def _scale_list(value: str) -> list[float]:
    try:
        return [float(v) for v in _comma_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {value!r}") from None


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in _comma_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Incident replay: run a scenario with and without Sluice, side by side.",
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=("run", "demo", "figures", "sweep", "list", "fleet-table"),
        default="run",
    )
    p.add_argument("--scenario", "-s", help="scenario name (loadtest/scenarios/NAME.yaml)")
    p.add_argument("--arm", default="all", choices=(*ARMS, "all"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default loadtest/out/<ts>)"
    )
    p.add_argument("--capacity-scale", type=float, default=1.0, help="\u00d7 the backend's workers")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="override the clients")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the trigger")
    p.add_argument(
        "--cold",
        action="store_true",
        help=f"cold start: Sluice up only a few seconds before the trigger (--warmup "
        f"{COLD_WARMUP:g}; named 'cold' in the results)",
    )
    p.add_argument("--observe", type=float, default=None, help="seconds observed after t0")
    g = p.add_argument_group("figures", "restrict `figures` to part of its matrix")
    g.add_argument("--scenarios", type=_comma_list, default=None, help="e.g. reopen,two-region")
    g.add_argument("--profiles", type=_comma_list, default=None, help="e.g. sdk,naive")
    g.add_argument("--scales", type=_scale_list, default=None, help="capacity scales, e.g. 1,2")
    f = p.add_argument_group("fleet", "K sidecars behind HAProxy (issue 18; `fleet-table`: lists)")
    f.add_argument("--fleet", type=_int_list, default=None, help="K backends, e.g. 3 (or 1,3,5)")
    f.add_argument("--lb", type=_comma_list, default=None, help="roundrobin or leastconn")
    f.add_argument("--arms", type=_comma_list, default=None, help="fleet-table's arms (sluice)")
    f.add_argument("--render", type=_comma_list, default=None, help="fleet-table: print DIRs'")
    f.add_argument(
        "--fleet-redis", action="store_true", help="the sidecars share state on a real Redis"
    )
    f.add_argument(
        "--redis-kill-at", type=float, default=None, help="SIGKILL Redis S s after the trigger"
    )
    f.add_argument(
        "--redis-restart-after", type=float, default=5.0, help="restart it this long after"
    )
    w = p.add_argument_group("sweep", "the seeded storm sweep (loadtest/sweep.py)")
    w.add_argument(
        "--runs", type=int, default=None, help="run seeds 1..RUNS (default 40, all of them)"
    )
    w.add_argument("--seeds", default=None, help="only these seeds, e.g. 1-4 or 3,7,9")
    w.add_argument(
        "--sluice-config",
        type=Path,
        default=None,
        help="the Sluice config to run (default loadtest/scenarios/reopen.sluice.yaml)",
    )
    w.add_argument("--draws-only", action="store_true", help="print the draws, run nothing")
    w.add_argument("--no-plots", action="store_true", help="no PNG per run")
    return p


def _sweep(args: argparse.Namespace) -> int:
    from . import sweep as sw

    if args.runs is not None and args.seeds is not None:
        print("give --runs or --seeds, not both", file=sys.stderr)
        return 2
    if args.seeds is not None:
        try:
            seeds = sw.parse_seeds(args.seeds)
        except ValueError as exc:
            print(f"--seeds: {exc}", file=sys.stderr)
            return 2
    else:
        runs = sw.SWEEP_RUNS if args.runs is None else args.runs
        if runs < 1:
            print("--runs must be >= 1", file=sys.stderr)
            return 2
        seeds = list(range(1, runs + 1))
    config = args.sluice_config or sw.DEFAULT_SLUICE_CONFIG
    if not config.exists():
        print(f"no Sluice config {config}", file=sys.stderr)
        return 2
    return sw.sweep(
        seeds,
        args.out or default_out_dir(),
        sluice_config=config,
        plots=not args.no_plots,
        draws_only=args.draws_only,
    )


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
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "fleet-table":
        from .fleet_cli import fleet_table_command

        return fleet_table_command(args, default_out_dir)
    timing = {}
    if args.warmup is not None:
        timing["warmup"] = args.warmup
    if args.observe is not None:
        timing["observe"] = args.observe
    if args.command == "figures":
        return figures(
            args.out,
            args.seed,
            scenarios=args.scenarios,
            profiles=args.profiles,
            scales=args.scales,
            timing=timing or None,
        )
    return _run(args, timing)


def _run(args: argparse.Namespace, timing: dict[str, float]) -> int:
    """One scenario's arms (`python -m loadtest --scenario NAME ...`)."""
    if not args.scenario:
        print("give --scenario NAME (or `demo` / `list`)", file=sys.stderr)
        return 2
    if args.capacity_scale <= 0:
        print("--capacity-scale must be > 0", file=sys.stderr)
        return 2
    if args.cold and args.warmup is not None:
        print("give --cold or --warmup, not both", file=sys.stderr)
        return 2
    arms = ARMS if args.arm == "all" else (args.arm,)
    from .fleet_cli import fleet_of_run, redis_of_args

    fleet, lb = fleet_of_run(args.fleet, args.lb, args.scenario)
    if fleet < 1:
        return 2
    redis = redis_of_args(args, lb is not None)
    if redis is None:
        return 2
    try:
        results = run_scenario(
            args.scenario,
            arms,
            seed=args.seed,
            capacity_scale=args.capacity_scale,
            profile=args.profile,
            out_dir=args.out,
            timing=timing or None,
            variant="cold" if args.cold else "",
            fleet=fleet,
            lb=lb,
            redis=redis,
        )
    except ScenarioError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; every process started for the run was stopped", file=sys.stderr)
        return 130
    return 0 if all("unavailable" not in r for r in results) else 1
