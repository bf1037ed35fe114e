"""Where a sweep run's returns land, replayed through this tree's return calendar.

    python -m loadtest.calendar_replay DIR SEED [--boost 1.5]

DIR is a `python -m loadtest sweep` output folder. Every refusal of a backlog workflow (a 503
or 429 with a Retry-After) is booked again, in the order they were sent, through
`proxy.admission.pacing.Pacer` at what the run's `/status` showed when it was sent: the pace
(first tries at `--boost` times it, the optimism a wave is booked with; a refused return at
the plain pace, or the measured pace with `shedding.pace_headroom` on its share), the arrival
baseline, the queue. Printed: per second after the release, the returns the run's clients were
told to come back in and the returns the replay books there, and the last second of each. The
run's own row checks the replay (it should land where the run did); a second tree's replay of
the same run shows what a change to the calendar does with the same bookings (issue 16:
rebookings made just after a limit cut set the calendar for seconds to come).
Pure but for reading the run's files; nothing is started.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from proxy.admission.pacing import Pacer
from proxy.config import SheddingConfig, load_config

_CALLERS = 64  # bookings are spread over this many caller slots (only their count matters)


def refusals(attempts: Sequence[Sequence[Any]], backlog: set[int]) -> list[Sequence[Any]]:
    """The backlog's refused attempts that were told when to come back, in sending order
    (fleet attempt rows: workflow, attempt, region, sent, done, code, retry-after s)."""
    out = [
        a
        for a in attempts
        if a[0] in backlog
        and a[4] is not None
        and a[6] is not None
        and str(a[5])[:3] in ("503", "429")
    ]
    return sorted(out, key=lambda a: a[3])


def booking_pace(status: dict[str, Any], first: bool, boost: float, headroom: float) -> float:
    """The pace a refusal was booked at, as far as `/status` tells: a first try's at the
    wave's optimism, a refused return's at the plain pace (with the headroom on its share
    once the pace is measured)."""
    pace = float(status["pace_rps"])
    if first:
        return pace * boost
    if not status["pace_measured"]:
        return pace
    share = max(pace - float(status["signals"]["arrival_baseline"] or 0.0), 0.0)
    return pace + share * (headroom - 1.0)


def replay(
    config: SheddingConfig,
    refused: Sequence[Sequence[Any]],
    samples: Sequence[tuple[float, dict[str, Any]]],
    t0: float,
    boost: float,
) -> tuple[Counter[int], Counter[int]]:
    """Seconds after `t0` the run's clients were told to return in, and the replay's."""
    told: Counter[int] = Counter()
    booked: Counter[int] = Counter()
    if not samples:
        return told, booked
    pacer = Pacer(config, _CALLERS)
    times = [t for t, _ in samples]
    for a in refused:
        sent = float(a[3])
        status = samples[max(0, bisect.bisect_right(times, sent) - 1)][1]
        pace = booking_pace(status, a[1] == 0, boost, config.pace_headroom)
        baseline = float(status["signals"]["arrival_baseline"] or 0.0)
        ahead = min(int(status["queue"]["total"]), int(pace * status["client_patience_s"]))
        ms = pacer.book(int(a[0]) % _CALLERS, sent, pace, baseline, ahead)
        booked[math.floor(sent - t0 + ms / 1000.0)] += 1
        told[math.floor(float(a[4]) + float(a[6]) - t0)] += 1
    return told, booked


def table(told: Counter[int], booked: Counter[int]) -> str:
    """Both calendars side by side, a column per second, and where each ends."""
    seconds = sorted(set(told) | set(booked))
    if not seconds:
        return "no refusal with a Retry-After in this run"

    def row(name: str, c: Counter[int]) -> str:
        return f"{name:<8}" + "".join(f"{c[s]:5d}" for s in seconds)

    def last(c: Counter[int]) -> str:
        return f"+{max(s for s in c if c[s])}" if c else "-"

    return "\n".join(
        [
            row("second", Counter({s: s for s in seconds})),
            row("run", told),
            row("replay", booked),
            f"last return: run {last(told)} s, replay {last(booked)} s after the release",
        ]
    )


def _load(folder: Path, seed: int) -> tuple[SheddingConfig, list[Sequence[Any]], Any, float]:
    name = f"sweep-{seed:02d}"
    run = orjson.loads((folder / f"{name}.json").read_bytes())
    fleet = orjson.loads((folder / "raw" / f"{name}-sluice-fleet.json").read_bytes())
    status = orjson.loads((folder / "raw" / f"{name}-sluice-sluice-east-status.json").read_bytes())
    config = load_config(next((folder / "configs").glob(f"{name}-*.yaml")))
    backlog = {int(w[0]) for w in fleet["workflows"] if w[1] == 1}
    refused = refusals(fleet["attempts"], backlog)
    return config.shedding, refused, status["samples"], float(run["times"]["t0"])


def main(argv: Sequence[str] | None = None) -> int:
    """Print one sweep run's calendar and its replay."""
    ap = argparse.ArgumentParser(prog="python -m loadtest.calendar_replay")
    ap.add_argument("folder", type=Path)
    ap.add_argument("seed", type=int)
    ap.add_argument("--boost", type=float, default=1.5, help="a first try's optimism")
    args = ap.parse_args(argv)
    shedding, refused, samples, t0 = _load(args.folder, args.seed)
    print(table(*replay(shedding, refused, [(s[0], s[1]) for s in samples], t0, args.boost)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
