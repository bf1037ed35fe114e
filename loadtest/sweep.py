"""`python -m loadtest sweep`: the seeded storm sweep (issue 16, DESIGN.md §6 "Robustness").

Seeds 1..40 are fixed (`--runs 40` runs exactly those), so nobody shops for a passing seed.
Each seed draws one `reopen` scenario at random (`random.Random(seed)`, every parameter drawn in
a fixed order on every try, redrawn until the draw meets every bound below), builds it in memory
(the schema of `loadtest/scenarios/reopen.yaml`), runs Sluice's arm of it with the runner and
analysis the other commands use, and judges it on the figures below.

The draws (`sweep_draw.draw`):
- backend: workers 5-100, service time 20-300 ms (both log-uniform), C = workers / service
  time within 50-1,000 req/s; thrash 0.5-2 (the simulator's default, 0.5, is the weakest);
- a backlog of 2-10 s of C (N), steady fresh traffic λ₀ of 0-60 % of C (none in 15 % of the
  runs; after a halving, of the halved C, so the backlog can drain at all); warm-up 0-60 s
  (none, a cold start, in 20 % of the runs); callers 1-50 (the Sluice config's four known
  callers first, the rest unknown to it), weights 1-4;
- client kind: `naive` (retry delay 0.05-1 s, 3 retries), `sdk`, `sdk-noheader`, the real SDK
  (`azure-sdk`) and `hostile` (its retries capped at up to 3 x C); client timeout 0.5-5 s;
- a capacity step in the middle of the drain (N / (C - λ₀) / 2 after the release): the workers
  halved or doubled. Half the draws ask for one, but only a drain ≥ 6 s has a middle to judge
  (shorter ones are redrawn), so about a quarter of the runs step (11 of seeds 1-40).
- Bounds that keep the machine out of the measurement: the attempts the clients offer, at worst
  (`sweep_draw.offered_at_worst`: λ₀ plus what the backlog sends in its first second if Sluice
  refused every attempt at once), ≤ 2,000/s; the real SDK ≤ 2,000 clients (N + λ₀ · timeout)
  and C ≤ 400.

The figures (`sweep_judge.judge`; targets below, every valid run on each):
- polite clients (`sdk`, `sdk-noheader`, `azure-sdk`): every backlog workflow succeeds, no fresh
  workflow fails, drain ≤ 1.20 x the ideal drain + the cold-start allowance 2 x service time x
  log₂(max(1, workers / limiter.initial)) (limiter.initial from the Sluice config run); the ideal
  drain is N / (C - λ₀), piecewise across a capacity step;
- every kind: every non-200 from t0 on an explicit answer of the reason table (timeouts and
  connection errors are counted on their own); the backend's queue within one round of its
  workers (of the workers in force, outside the 2 s after a step); backlog goodput ≥ 0.9 x
  (C - λ₀) in each 1 s window from the allowance's end until less than 1 s of C is left open in
  the backlog; with a timeout ≥ 1 s, no client timeout and no connection error; fresh traffic
  (if any) ≥ 99.5 % success with p99 ≤ 2 x service time + 50 ms; after a step, from 2 s after it
  until the backlog is under 1 s of C: no queue past the halved workers / the doubled workers
  ≥ 90 % busy on average.
- A run whose load generator's event-loop lag passes 50 ms at any sample from its start to its
  end, that dropped arrivals, or whose release was not N prepared writes (their connections
  lost before it) is void; at most a tenth of the runs (4 of 40) may be. The maximum lag, not
  a percentile: one 330 ms stall at the release (a connect storm, before the backlog was
  spawned late) kept the p99 at 4 ms but left the backend idle for half a second.

Output: a table (one row per run: seed, every drawn parameter, the figures, the CPU of the
generator and of Sluice, the verdict), the distribution of each figure, `sweep.txt`,
`sweep.json` (everything), per run `sweep-NN.json` (the analysis) and `.png`, and the drawn
scenarios as files (`scenarios/sweep-NN.yaml` beside the Sluice config run, so
`python -m loadtest --scenario …/sweep-NN.yaml --arm sluice` replays one). Exit 1 when a valid
run failed a figure, a run could not run, or too many were void.

Modules: `sweep_draw` (the draws and the scenario each becomes), `sweep_judge` (the figures and
the verdict, pure), `sweep_report` (the table and the distribution), and this one (running).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import yaml

from .runner import ArmPlan, run_arm_sync
from .scenario import SCENARIO_DIR
from .sweep_draw import (
    Draw,
    cold_start_allowance,
    describe,
    drain_bound,
    draw,
    expected_seconds,
    scenario_data,
    scenario_for,
)
from .sweep_judge import RunOutcome, exit_code, judge, run_figures, void_reasons
from .sweep_report import render_distribution, render_table

SWEEP_RUNS = 40  # seeds 1..40, fixed
DEFAULT_SLUICE_CONFIG = SCENARIO_DIR / "reopen.sluice.yaml"
ARM = "sluice"


def parse_seeds(text: str) -> list[int]:
    """`1-4`, `3,7,9` or `1-3,10` → seeds (each ≥ 1, in order, no repeats)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"not a seed or range: {part!r}") from None
        if a < 1 or b < a:
            raise ValueError(f"bad seed range: {part!r}")
        seeds += [s for s in range(a, b + 1) if s not in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def limiter_initial(config: Path) -> int:
    """limiter.initial of the Sluice config the sweep runs."""
    from proxy.config import load_config

    return load_config(config).limiter.initial


def _hms(seconds: float) -> str:
    """`3 min 07 s`."""
    m, s = divmod(max(0, round(seconds)), 60)
    return f"{m} min {s:02d} s"


def _write_scenario(d: Draw, initial: int, config: Path, folder: Path) -> Path:
    """The drawn scenario as a file, its Sluice config beside it, so `python -m loadtest
    --scenario …/sweep-NN.yaml --arm sluice` replays the run."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sweep-{d.seed:02d}.yaml"
    header = f"# storm sweep, seed {d.seed} (python -m loadtest sweep --seeds {d.seed})\n"
    path.write_text(
        header + yaml.safe_dump(scenario_data(d, initial), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    shutil.copyfile(config, folder / f"sweep-{d.seed:02d}.sluice.yaml")
    return path


def sweep(
    seeds: Sequence[int],
    out_dir: Path,
    sluice_config: Path = DEFAULT_SLUICE_CONFIG,
    plots: bool = True,
    draws_only: bool = False,
) -> int:
    """Run the sweep over `seeds`; prints and writes the table; returns the exit code."""
    initial = limiter_initial(sluice_config)
    draws = [draw(s) for s in seeds]
    expected = [expected_seconds(d, initial) for d in draws]
    print(
        f"Storm sweep (issue 16): {len(draws)} run(s), seeds {_seed_text(seeds)}; Sluice config "
        f"{sluice_config} (limiter.initial {initial}); sluice arm only.\n"
        + "\n".join(f"  seed {d.seed:2d}: {describe(d)}" for d in draws),
        flush=True,
    )
    if draws_only:
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"expected duration: about {_hms(sum(expected))}; do not load the machine meanwhile.\n"
        f"Output: {out_dir}\n",
        flush=True,
    )
    started = time.monotonic()
    outcomes: list[RunOutcome] = []
    interrupted = False
    try:
        for i, d in enumerate(draws):
            print(f"=== run {i + 1}/{len(draws)}: seed {d.seed}: {describe(d)}", flush=True)
            outcomes.append(_run_one(d, initial, sluice_config, out_dir, plots))
            _print_verdict(outcomes[-1], expected, i, time.monotonic() - started)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; every process started for the run was stopped", file=sys.stderr)
    head = f"storm sweep: seeds {_seed_text([o.draw.seed for o in outcomes])}, Sluice config "
    head += f"{sluice_config} (limiter.initial {initial}), {_hms(time.monotonic() - started)}"
    if interrupted:
        head += f" (interrupted after {len(outcomes)} of {len(draws)} runs)"
    _write_summary(head, outcomes, out_dir, seeds, sluice_config, initial, interrupted)
    if interrupted:
        return 130
    return exit_code(outcomes) if len(outcomes) == len(draws) else 1


def _run_one(d: Draw, initial: int, sluice_config: Path, out_dir: Path, plots: bool) -> RunOutcome:
    """One seed's run: its scenario written, its sluice arm run and judged, its analysis (and
    plot) written, its checks printed."""
    t_run = time.monotonic()
    path = _write_scenario(d, initial, sluice_config, out_dir / "scenarios")
    plan = ArmPlan(scenario_for(d, initial), path, ARM, d.seed, 1.0, out_dir, sluice_config)
    res = run_arm_sync(plan)
    res["sweep"] = {"draw": asdict(d), "limiter_initial": initial}
    outcome = RunOutcome(
        d,
        judge(res, d, initial),
        void_reasons(res),
        run_figures(res, d, initial),
        time.monotonic() - t_run,
    )
    (out_dir / f"sweep-{d.seed:02d}.json").write_bytes(
        orjson.dumps(res, option=orjson.OPT_NON_STR_KEYS)
    )
    if plots and "unavailable" not in res:
        from .plot import plot_scenario

        plot_scenario([res], out_dir / f"sweep-{d.seed:02d}.png")
    for c in outcome.checks:
        print(f"  {'PASS' if c.ok else 'FAIL'}  {c.figure}: {c.measured}  [{c.target}]")
    return outcome


def _print_verdict(outcome: RunOutcome, expected: Sequence[float], i: int, elapsed: float) -> None:
    """Run `i`'s verdict, and how long the runs left should take at the pace so far."""
    done_expected = sum(expected[: i + 1])
    left = sum(expected[i + 1 :]) * (elapsed / done_expected if done_expected else 1.0)
    print(
        f"  -> {outcome.verdict}"
        + (f" ({'; '.join(outcome.void)})" if outcome.void else "")
        + f" in {outcome.wall_s:.0f} s; ETA {_hms(left)} for {len(expected) - i - 1} more\n",
        flush=True,
    )


def _write_summary(
    head: str,
    outcomes: Sequence[RunOutcome],
    out_dir: Path,
    seeds: Sequence[int],
    sluice_config: Path,
    initial: int,
    interrupted: bool,
) -> None:
    """The table and distribution, printed and in sweep.txt; everything in sweep.json."""
    table = render_table(outcomes)
    dist = render_distribution(outcomes) if outcomes else "no run finished"
    text = head + "\n\n" + table + "\n\n" + dist + "\n"
    (out_dir / "sweep.txt").write_text(text, encoding="utf-8")
    doc = {
        "seeds": list(seeds),
        "sluice_config": str(sluice_config),
        "limiter_initial": initial,
        "interrupted": interrupted,
        "runs": [_run_json(o, initial) for o in outcomes],
        "exit_code": exit_code(outcomes),
    }
    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    (out_dir / "sweep.json").write_bytes(orjson.dumps(doc, option=option))
    print("\n" + text)
    print(f"wrote {out_dir / 'sweep.txt'}, {out_dir / 'sweep.json'}")


def _run_json(o: RunOutcome, initial: int) -> dict[str, Any]:
    """One run's entry in sweep.json."""
    return {
        "seed": o.draw.seed,
        "draw": asdict(o.draw),
        "expected_drain_s": o.draw.ideal_drain,
        "drain_bound_s": drain_bound(o.draw, initial),
        "cold_start_allowance_s": cold_start_allowance(o.draw, initial),
        "verdict": o.verdict,
        "void": o.void,
        "checks": [asdict(c) for c in o.checks],
        "figures": o.figures,
        "wall_s": o.wall_s,
        "result_file": f"sweep-{o.draw.seed:02d}.json",
    }


def _seed_text(seeds: Sequence[int]) -> str:
    """`1-40` for a range of three or more, else `3,7,9`."""
    if not seeds:
        return "none"
    s = sorted(seeds)
    if s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}-{s[-1]}"
    return ",".join(str(x) for x in s)
