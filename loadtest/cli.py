"""`python -m loadtest`: run a scenario's arms, print the table, write the PNG and JSON.

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
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .figures import PROTECTED_ARM, all_met, render_checks
from .fleet_redis import RedisPlan
from .procs import interrupt_on_termination
from .profiles import PROFILE_NAMES
from .runner import ARMS, ArmPlan, run_arm_sync
from .scenario import ScenarioError, list_scenarios, load_scenario

OUT_ROOT = Path(__file__).parent / "out"
DEMO_SCENARIOS: tuple[str, ...] = ("reopen",)
# After the three arms with the scenario's naive clients (the metastability proof), both
# replays through Sluice with SDK-like clients that honour Retry-After, at the scenario's
# capacity and at twice it (the same config: the limit is learned): the backlog drains.
DEMO_DRAIN_PROFILE = "sdk"
DEMO_DRAIN_RUNS: tuple[tuple[str, float], ...] = (
    ("reopen", 1.0),
    ("reopen", 2.0),
    ("backend-outage", 1.0),
    ("backend-outage", 2.0),
)

# Run variants: timing overrides with a name. `cold`: Sluice starts a few seconds before the
# trigger (it is up ~1.5 s before the fleet's first arrival, then sees COLD_WARMUP s of fresh
# traffic only), so the storm meets a limiter that has learned next to nothing.
COLD_WARMUP = 3.0
VARIANTS: dict[str, dict[str, float]] = {"": {}, "cold": {"warmup": COLD_WARMUP}}

# `python -m loadtest figures`: the runs whose sluice arm must reach the figures of issues 4, 5
# and 15 (scenario, capacity scales, client profiles, variant), in the order they run.
FIGURES_MATRIX: tuple[tuple[str, tuple[float, ...], tuple[str, ...], str], ...] = (
    ("reopen", (1.0, 2.0), ("sdk", "sdk-noheader", "naive", "hostile", "azure-sdk"), ""),
    ("reopen", (1.0, 2.0), ("azure-sdk",), "cold"),
    ("backend-outage", (1.0, 2.0), ("sdk", "sdk-noheader", "naive", "hostile"), ""),
    ("two-region", (1.0,), ("naive", "sdk"), ""),
)


class FigureRun(NamedTuple):
    """One run of the figures matrix."""

    scenario: str
    scale: float
    profile: str
    variant: str = ""

    @property
    def label(self) -> str:
        """Like `reopen x2 azure-sdk cold` (the scale with a multiplication sign)."""
        return f"{self.scenario} \u00d7{self.scale:g} {self.profile}" + (
            f" {self.variant}" if self.variant else ""
        )


ARM_OVERHEAD_S = 3.0  # per arm beyond the scenario's own timing: start-up, analysis, plot


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


def demo(out_dir: Path | None = None, seed: int = 1) -> int:
    """`make demo`: the reopen scenario in all three arms, then the sluice arm of reopen and
    backend-outage with SDK-like clients at capacity x1 and x2, and the figures they reach
    (about five minutes)."""
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
        f"\nThrough Sluice with '{DEMO_DRAIN_PROFILE}' clients (they honour Retry-After), both "
        "replays at the scenario's capacity and at twice it: every backlog workflow should "
        f"drain within the bound. Their files: {out_dir / DEMO_DRAIN_PROFILE}\n",
        flush=True,
    )
    drained: list[dict[str, Any]] = []
    for name, scale in DEMO_DRAIN_RUNS:
        drained += run_scenario(
            name,
            ("sluice",),
            seed=seed,
            capacity_scale=scale,
            profile=DEMO_DRAIN_PROFILE,
            # Their own folder: the runner names raw records, logs and CSVs by scenario, scale
            # and arm, so reopen x1's sluice arm would overwrite the three-arm run's.
            out_dir=out_dir / DEMO_DRAIN_PROFILE,
        )
    summary = render_checks(drained)
    (out_dir / "figures.txt").write_text(summary + "\n", encoding="utf-8")
    print("\nfigures of the protected runs:\n" + summary)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; results in {out_dir}")
    others = [s for s in list_scenarios() if s not in DEMO_SCENARIOS]
    if others:
        print("more: " + "; ".join(f"python -m loadtest --scenario {s} --arm all" for s in others))
    return 0


def figures_plan(
    scenarios: Sequence[str] | None = None,
    profiles: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
) -> list[FigureRun]:
    """The runs of FIGURES_MATRIX, restricted to the given scenarios, profiles and scales
    (None: no restriction; a scenario's variants count as that scenario). Unknown values raise
    ValueError naming what the matrix has."""
    known_s = list(dict.fromkeys(name for name, _, _, _ in FIGURES_MATRIX))
    known_p = sorted({p for _, _, ps, _ in FIGURES_MATRIX for p in ps})
    known_x = sorted({x for _, xs, _, _ in FIGURES_MATRIX for x in xs})
    for label, given, known in (
        ("--scenarios", scenarios, known_s),
        ("--profiles", profiles, known_p),
        ("--scales", scales, known_x),
    ):
        unknown = [v for v in given or () if v not in known]
        if unknown:
            raise ValueError(
                f"{label}: not in the figures matrix: {_listed(unknown)} (it has {_listed(known)})"
            )
    return [
        FigureRun(name, scale, profile, variant)
        for name, xs, ps, variant in FIGURES_MATRIX
        if scenarios is None or name in scenarios
        for scale in xs
        if scales is None or scale in scales
        for profile in ps
        if profiles is None or profile in profiles
    ]


def _listed(values: Sequence[str | float]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def expected_seconds(plan: Sequence[FigureRun], timing: dict[str, float] | None = None) -> float:
    """Rough wall time of `plan`'s sluice arms: each scenario's timing plus start-up."""
    total = 0.0
    for run in plan:
        t = load_scenario(run.scenario)[0].timing.model_dump() | (timing or {})
        t |= VARIANTS[run.variant]
        total += t["warmup"] + t["outage"] + t["observe"] + t["grace"] + ARM_OVERHEAD_S
    return total


def figures(
    out_dir: Path | None = None,
    seed: int = 1,
    scenarios: Sequence[str] | None = None,
    profiles: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    timing: dict[str, float] | None = None,
) -> int:
    """`make figures`: the sluice arm of every run of FIGURES_MATRIX (restricted by the
    arguments), each with its table and checks, then one combined PASS/FAIL summary (also
    written to figures.txt). 0 when every figure of every run was met, 1 otherwise."""
    try:
        plan = figures_plan(scenarios, profiles, scales)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not plan:
        print("nothing to run: the restrictions exclude every run of the matrix", file=sys.stderr)
        return 2
    out_dir = out_dir or default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        expected = expected_seconds(plan, timing)
    except ScenarioError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(
        "Sluice acceptance figures (issues 4, 5 and 15): the sluice arm only, "
        f"{len(plan)} run{'s' if len(plan) != 1 else ''}:\n"
        + "\n".join(f"  {run.label}" for run in plan)
        + f"\nexpected duration: about {expected / 60:.0f} min "
        f"({expected:.0f} s, 35\u201345 s per run); do not load the machine meanwhile.\n"
        # The runner names raw records, logs and CSVs by scenario, scale and arm, not profile:
        # one folder per profile (and variant) keeps each run's.
        f"Output: {out_dir} (one folder per profile; summary in figures.txt)\n",
        flush=True,
    )
    started = time.monotonic()
    results, interrupted = _run_plan(plan, out_dir, seed, timing)
    summary = render_checks(results)
    if interrupted:
        summary = f"(interrupted after {len(results)} of {len(plan)} runs)\n" + summary
    (out_dir / "figures.txt").write_text(summary + "\n", encoding="utf-8")
    print(f"\n=== figures, every run ({time.monotonic() - started:.0f} s) ===")
    print(summary)
    print(f"\nwrote {out_dir / 'figures.txt'}")
    if interrupted:
        return 130
    return 0 if len(results) == len(plan) and all_met(results) else 1


def _run_plan(
    plan: Sequence[FigureRun], out_dir: Path, seed: int, timing: dict[str, float] | None
) -> tuple[list[dict[str, Any]], bool]:
    """The sluice arm of each run of `plan`, each in its profile's (and variant's) folder; the
    results so far, and whether Ctrl-C (or SIGTERM) cut the plan short."""
    results: list[dict[str, Any]] = []
    try:
        for i, run in enumerate(plan, 1):
            print(f"\n=== run {i}/{len(plan)}: {run.label} ===", flush=True)
            folder = run.profile + (f"-{run.variant}" if run.variant else "")
            results += run_scenario(
                run.scenario,
                (PROTECTED_ARM,),
                seed=seed,
                capacity_scale=run.scale,
                profile=run.profile,
                out_dir=out_dir / folder,
                timing=timing,
                variant=run.variant,
            )
    except KeyboardInterrupt:
        print("\ninterrupted; every process started for the run was stopped", file=sys.stderr)
        return results, True
    return results, False


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
