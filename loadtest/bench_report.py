"""The bench's tables: closed loop (req/s, CPU per request, ratio to the minimal forwarder),
open loop (p50/p99 and p99 added over direct), Sluice's own answers, and each target of issue 7
beside what was measured."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from .bench_memory import WAITING
from .bench_rows import FLOOR_ROWS, NORMAL_ROWS, Row

# Targets of issue 7 / DESIGN.md §6.
TARGET_NORMAL = 0.5
TARGET_REFUSAL = 0.35
TARGET_P99_ADDED_MS = 1.0
TARGET_RSS_MB = 250.0


def _mm(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """`median (min-max)`, or the one value, or `-`."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _med(values: Sequence[float]) -> float:
    """The median (nan when empty)."""
    return statistics.median(values) if values else float("nan")


def print_wrk_table(rows: list[Row], conns: Sequence[int]) -> None:
    """The closed-loop table: req/s, CPU µs/req, ratio to the forwarder, wrk p50/p99."""
    fwd = next((r for r in rows if r.name == "minimal-forwarder"), None)
    head = f"{'row':<20} {'conns':>5} {'req/s':>22} {'CPU us/req':>22} {'x fwd':>6}"
    print(head + f" {'p50 ms':>8} {'p99 ms':>8}")
    floors_seen = False
    for row in rows:
        if row.name in FLOOR_ROWS and not floors_seen:
            floors_seen = True
            print(
                "floors of Sluice's stack (no Sluice logic; for reading the figures, not targets):"
            )
        if row.skipped:
            print(f"{row.name:<20} skipped: {row.skipped}")
            continue
        for c in conns:
            cpu = row.cpu_us.get(c, [])
            ratio = "-"
            if fwd is not None and cpu and fwd.cpu_us.get(c):
                ratio = f"{_med(cpu) / _med(fwd.cpu_us[c]):.2f}"
            print(
                f"{row.name:<20} {c:>5} {_mm(row.rps.get(c, []), '{:.0f}'):>22}"
                f" {_mm(cpu) if row.pid else '-':>22} {ratio:>6}"
                f" {_med(row.p50.get(c, [])):>8.2f} {_med(row.p99.get(c, [])):>8.2f}"
            )
        for note in row.notes:
            print(f"{'':<20} note: {note}")


def print_open_loop_table(rows: list[Row], rate: float) -> None:
    """The fixed-rate latency table."""
    print(f"{'row':<20} {'p50 ms':>20} {'p99 ms':>20} {'p99 added over direct, ms':>27}")
    for row in rows:
        if row.skipped:
            print(f"{row.name:<20} skipped: {row.skipped}")
            continue
        if not row.ol_p99:
            continue
        print(
            f"{row.name:<20} {_mm(row.ol_p50, '{:.2f}'):>20} {_mm(row.ol_p99, '{:.2f}'):>20}"
            f" {_mm(row.ol_added, '{:+.2f}'):>27}"
        )


def print_own_answers(own: dict[str, dict[str, int]], checked: bool) -> bool:
    """Sluice's own answers per row (warm-up included); True when a NORMAL forwarding row
    against this healthy backend has any (checked unless the default config was asked for)."""
    print("\nSluice's own answers over the whole run (warm-up included), by reason:")
    failed = False
    for name, answers in own.items():
        text = ", ".join(f"{r} {n}" for r, n in sorted(answers.items())) or "none"
        verdict = ""
        if checked and name in NORMAL_ROWS:
            bad = sum(answers.values()) > 0
            failed = failed or bad
            verdict = "  FAIL (NORMAL, healthy backend: none allowed)" if bad else "  ok"
        print(f"  {name:<20} {text}{verdict}")
    return failed


def print_targets(rows: list[Row], conns: Sequence[int], memory: dict[str, Any] | None) -> None:
    """Each target of issue 7 beside what was measured."""
    by = {r.name: r for r in rows}
    print("Targets (issue 7):")
    _print_cpu_targets(by, conns)
    _print_p99_target(by)
    if memory is not None:
        rss = memory.get("rss")
        if rss is None:
            print(f"  {WAITING} waiting <= {TARGET_RSS_MB:g} MB resident: not measured")
        else:
            verdict = "met" if rss <= TARGET_RSS_MB else "NOT met"
            print(f"  {WAITING} waiting <= {TARGET_RSS_MB:g} MB resident: {rss:.1f} MB ({verdict})")


def _cpu_ratio(by: dict[str, Row], name: str, c: int) -> float | None:
    """Row `name`'s CPU per request over the minimal forwarder's at `c` connections."""
    row, fwd = by.get(name), by.get("minimal-forwarder")
    if row is None or fwd is None or not row.cpu_us.get(c) or not fwd.cpu_us.get(c):
        return None
    return _med(row.cpu_us[c]) / _med(fwd.cpu_us[c])


def _print_cpu_targets(by: dict[str, Row], conns: Sequence[int]) -> None:
    """CPU per request of forwarding and of a refusal against the forwarder's; the floors."""
    for label, name, target in (
        ("forwarding in NORMAL (lean)", "sluice-lean", TARGET_NORMAL),
        ("forwarding in NORMAL (aiohttp client, for reference)", "sluice-aiohttp", TARGET_NORMAL),
        ("a refusal (SHIELD)", "sluice-shield", TARGET_REFUSAL),
    ):
        parts = []
        for c in conns:
            r = _cpu_ratio(by, name, c)
            if r is None:
                parts.append(f"{c} conns: not measured")
            else:
                verdict = "met" if r <= target else "NOT met"
                parts.append(f"{c} conns {r:.2f}x ({verdict})")
        print(f"  {label} <= {target}x forwarder CPU/req: {', '.join(parts)}")
    floors = []
    for name, what in (
        ("aiohttp-static", "a constant answer"),
        ("aiohttp+lean", "bare forwarding"),
    ):
        ratios = [r for c in conns if (r := _cpu_ratio(by, name, c)) is not None]
        if ratios:
            floors.append(f"{what} {min(ratios):.2f}-{max(ratios):.2f}x ({name})")
    if floors:
        print(f"  (the stack's own floors, same run: {'; '.join(floors)})")


def _print_p99_target(by: dict[str, Row]) -> None:
    """p99 added by sluice-lean over direct in the open loop, beside the noise floor."""
    lean = by.get("sluice-lean")
    again = by.get("direct (again)")
    if lean is None or not lean.ol_added:
        return
    added = _med(lean.ol_added)
    noise = _med(again.ol_added) if again is not None and again.ol_added else float("nan")
    verdict = "met" if added <= TARGET_P99_ADDED_MS else "NOT met"
    print(
        f"  p99 added <= {TARGET_P99_ADDED_MS:g} ms over direct (sluice-lean, open loop): "
        f"{added:+.2f} ms ({verdict}); noise floor direct vs direct {noise:+.2f} ms"
    )
    # What any proxy on core 1 gets here: time-sharing with other processes shows in p99.
    others = [
        f"{name} {_med(by[name].ol_added):+.2f} ms"
        for name in ("nginx", "haproxy", "minimal-forwarder")
        if name in by and by[name].ol_added
    ]
    if others:
        print(f"    for reference, p99 added by {', '.join(others)}")
