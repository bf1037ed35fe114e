"""`make demo` (`python -m loadtest demo`): the reopen scenario in all three arms, then the
sluice arm of reopen and backend-outage with SDK-like clients at capacity x1 and x2, and the
figures they reach."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .figures import render_checks
from .runner import ARMS
from .scenario import list_scenarios
from .scenario_run import default_out_dir, run_scenario

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
