"""`python -m loadtest fleet-table`: a bounded grid of fleet replays (issue 18) and its K table.

Each run of the grid is one arm of a single-region scenario with K backends sharing the
scenario's capacity, a sidecar per backend (none in `direct`) and HAProxy in front
(loadtest.balancer), written to `<out>/k<K>-<lb>/<scenario>-<profile>/` like any run (table, JSON,
PNG, raw/, logs/, configs/). The table has one row per run (K, lb, scenario, profile, arm) and
the figures of the issue as columns; it is written to `fleet-table.txt` and its rows to
`fleet-table.json`, and `--render DIR[,DIR…]` prints the rows of earlier grids as one table.
With one backend the balancing algorithms cannot differ: K = 1 runs the first `--lb` only.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .balancer import HAPROXY, HAPROXY_MISSING, LB_ALGORITHMS
from .fleet_redis import RedisPlan
from .fleet_table_rows import render_rows, row_of
from .runner import ARMS, FLEET_REGIONS
from .scenario import ScenarioError, load_scenario

TABLE_TXT = "fleet-table.txt"
TABLE_JSON = "fleet-table.json"
RUN_OVERHEAD_S = 12.0  # per run beyond the scenario's timing: K + K + 2 children started, stopped


class GridRun(NamedTuple):
    """One run of the grid."""

    k: int
    lb: str
    scenario: str
    profile: str
    arm: str

    @property
    def label(self) -> str:
        """Like `K=3 roundrobin reopen sdk sluice`."""
        return f"K={self.k} {self.lb} {self.scenario} {self.profile} {self.arm}"

    @property
    def folder(self) -> str:
        """Its output folder under the grid's."""
        return f"k{self.k}-{self.lb}/{Path(self.scenario).stem}-{self.profile}" + (
            "" if self.arm == "sluice" else f"-{self.arm}"
        )


def plan_grid(
    ks: Sequence[int],
    lbs: Sequence[str],
    scenarios: Sequence[str],
    profiles: Sequence[str],
    arms: Sequence[str],
) -> list[GridRun]:
    """The grid's runs in order (K, lb, scenario, profile, arm); K = 1 with the first lb only.
    ValueError naming what is wrong (a K < 1, an unknown lb or arm, a two-region scenario)."""
    if not ks or not lbs or not scenarios or not profiles or not arms:
        raise ValueError("every dimension of the grid needs at least one value")
    if any(k < 1 for k in ks):
        raise ValueError(f"--fleet: K must be ≥ 1 (got {', '.join(map(str, ks))})")
    for label, given, known in (("--lb", lbs, LB_ALGORITHMS), ("--arms", arms, ARMS)):
        unknown = [v for v in given if v not in known]
        if unknown:
            raise ValueError(f"{label}: unknown {', '.join(unknown)} (have {', '.join(known)})")
    for name in scenarios:
        try:
            sc, _ = load_scenario(name)
        except ScenarioError as exc:
            raise ValueError(str(exc)) from None
        if len(sc.regions) > 1:
            raise ValueError(f"{name}: {FLEET_REGIONS}")
    return [
        GridRun(k, lb, s, p, a)
        for k in ks
        for lb in (lbs if k > 1 else lbs[:1])
        for s in scenarios
        for p in profiles
        for a in arms
    ]


def expected_seconds(plan: Sequence[GridRun]) -> float:
    """Rough wall time of the grid."""
    total = 0.0
    for run in plan:
        t = load_scenario(run.scenario)[0].timing
        total += t.warmup + t.outage + t.observe + t.grace + RUN_OVERHEAD_S
    return total


def fleet_table(
    plan: Sequence[GridRun], seed: int, out_dir: Path, redis: RedisPlan | None = None
) -> int:
    """Run every run of `plan` (one arm each; `redis`: the sidecars share state on Redis),
    print and write the table; 0 when every run ran (whatever its figures), 1 if one could
    not, 130 when interrupted."""
    from .cli import run_scenario  # cli dispatches here: imported when run, not at import

    if shutil.which(HAPROXY) is None:
        print(HAPROXY_MISSING, file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = expected_seconds(plan)
    print(
        f"fleet table: {len(plan)} runs, about {expected / 60:.0f} min; output {out_dir}\n"
        + "\n".join(f"  {run.label}" for run in plan),
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for i, run in enumerate(plan, 1):
            print(f"\n=== run {i}/{len(plan)}: {run.label} ===", flush=True)
            results = run_scenario(
                run.scenario,
                (run.arm,),
                seed=seed,
                profile=run.profile,
                out_dir=out_dir / run.folder,
                fleet=run.k,
                lb=run.lb,
                redis=redis,
            )
            rows.append(row_of(results[0], run.k, run.lb) | {"run": run._asdict()})
            _write(rows, out_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started for the run was stopped", file=sys.stderr)
        return 130
    print(f"\n=== fleet table ({time.monotonic() - started:.0f} s) ===")
    print(render_rows(rows))
    print(f"\nwrote {out_dir / TABLE_TXT} and {out_dir / TABLE_JSON}")
    return 0 if all(r["verdict"] != "unavailable" for r in rows) else 1


def _write(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """The table so far (a grid cut short still leaves its rows)."""
    (out_dir / TABLE_TXT).write_text(render_rows(rows) + "\n", encoding="utf-8")
    (out_dir / TABLE_JSON).write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


def render_saved(dirs: Sequence[Path]) -> int:
    """Print the rows of earlier grids (their fleet-table.json) as one table, each row made
    again from its run's results where they are still there (so a row reads as this code
    reads it)."""
    rows: list[dict[str, Any]] = []
    for d in dirs:
        path = d / TABLE_JSON if d.is_dir() else d
        if not path.exists():
            print(f"no {TABLE_JSON} in {d}", file=sys.stderr)
            return 2
        rows += [_again(row, path.parent) for row in orjson.loads(path.read_bytes())]
    print(render_rows(rows))
    return 0


def _again(row: dict[str, Any], grid_dir: Path) -> dict[str, Any]:
    """`row` made again from its run's results JSON (`<folder>/<scenario>-<profile>.json`),
    or as saved when they are gone."""
    run = GridRun(int(row["k"]), row["lb"], row["scenario"], row["profile"], row["arm"])
    results = grid_dir / run.folder / f"{Path(run.scenario).stem}-{run.profile}.json"
    if not results.exists():
        return row
    return row_of(orjson.loads(results.read_bytes())[0], run.k, run.lb) | {"run": run._asdict()}
