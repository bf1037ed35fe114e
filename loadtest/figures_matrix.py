"""`make figures` (`python -m loadtest figures`): the acceptance matrix, the runs whose sluice
arm must reach the figures of issues 4, 5 and 15, restricted on the command line, each run's
checks and one PASS/FAIL summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .figures import PROTECTED_ARM, all_met, render_checks
from .scenario import ScenarioError, load_scenario
from .scenario_run import VARIANTS, default_out_dir, run_scenario

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
