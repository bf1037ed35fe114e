"""The fleet replay's command line (issue 18): `--fleet K --lb ALGO` of a run, and the
`fleet-table` command (loadtest.fleet_table), checked before anything starts."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .balancer import HAPROXY, HAPROXY_MISSING, LB_ALGORITHMS
from .fleet_redis import RedisPlan
from .runner import FLEET_REGIONS
from .scenario import ScenarioError, load_scenario

DEFAULT_KS: tuple[int, ...] = (1, 3, 5)
DEFAULT_SCENARIOS: tuple[str, ...] = ("reopen", "backend-outage")
DEFAULT_PROFILES: tuple[str, ...] = ("sdk", "naive")
DEFAULT_ARMS: tuple[str, ...] = ("sluice",)


def _refuse(why: str) -> tuple[int, str | None]:
    print(why, file=sys.stderr)
    return 0, None


def fleet_of_run(
    fleet: Sequence[int] | None, lb: Sequence[str] | None, scenario: str
) -> tuple[int, str | None]:
    """A run's K and balancer from `--fleet` and `--lb`: (1, None) without either (today's
    single instance, no balancer); round robin unless `--lb` says; with `--lb` and K = 1, one
    backend behind the balancer. (0, None) after printing why when they cannot run: more than
    one value, K < 1, an unknown algorithm, a two-region scenario, no haproxy."""
    if fleet is None and lb is None:
        return 1, None
    if (fleet is not None and len(fleet) != 1) or (lb is not None and len(lb) != 1):
        return _refuse("a run takes one --fleet K and one --lb (fleet-table takes lists)")
    k = fleet[0] if fleet else 1
    algo = lb[0] if lb else LB_ALGORITHMS[0]
    if k < 1:
        return _refuse(f"--fleet: K must be ≥ 1 (got {k})")
    if algo not in LB_ALGORITHMS:
        return _refuse(f"--lb: one of {', '.join(LB_ALGORITHMS)} (got {algo!r})")
    if k == 1 and lb is None:
        return 1, None
    try:
        sc, _ = load_scenario(scenario)
    except ScenarioError:
        return k, algo  # the run itself says what is wrong with it
    if len(sc.regions) > 1:
        return _refuse(f"{scenario}: {FLEET_REGIONS}")
    if shutil.which(HAPROXY) is None:
        return _refuse(HAPROXY_MISSING)
    return k, algo


def redis_of_args(args: argparse.Namespace, fleet: bool) -> RedisPlan | None:
    """The run's shared state and fault from `--fleet-redis`, `--redis-kill-at` and
    `--redis-restart-after`; None after printing why they cannot run."""
    plan = RedisPlan(
        bool(getattr(args, "fleet_redis", False)),
        getattr(args, "redis_kill_at", None),
        float(getattr(args, "redis_restart_after", 5.0)),
    )
    why = plan.check(fleet)
    if why is not None:
        print(why, file=sys.stderr)
        return None
    return plan


def fleet_table_command(args: argparse.Namespace, default_out: Callable[[], Path]) -> int:
    """`python -m loadtest fleet-table`: run the grid (or `--render` earlier ones)."""
    from .fleet_table import fleet_table, plan_grid, render_saved

    if args.render:
        return render_saved([Path(d) for d in args.render])
    try:
        plan = plan_grid(
            args.fleet or DEFAULT_KS,
            args.lb or LB_ALGORITHMS,
            args.scenarios or DEFAULT_SCENARIOS,
            args.profiles or DEFAULT_PROFILES,
            args.arms or DEFAULT_ARMS,
        )
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    redis = redis_of_args(args, True)
    if redis is None:
        return 2
    return fleet_table(plan, args.seed, args.out or default_out(), redis)
