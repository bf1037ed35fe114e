"""Counting in windows and bins: nearest-rank percentiles, counts and rates in [lo, hi), per-bin
counts and maxima (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def count_in(times: Iterable[float], lo: float, hi: float) -> int:
    """How many of `times` fall in [lo, hi)."""
    return sum(1 for t in times if lo <= t < hi)


def rate_in(times: Iterable[float], lo: float, hi: float) -> float:
    """Events per second in [lo, hi)."""
    return count_in(times, lo, hi) / (hi - lo) if hi > lo else 0.0


def bin_counts(times: Iterable[float], lo: float, hi: float, width: float) -> list[int]:
    """Counts of `times` per bin of `width` seconds from `lo` (bins cover [lo, hi))."""
    n = max(0, math.ceil((hi - lo) / width))
    out = [0] * n
    for t in times:
        i = int((t - lo) // width)
        if 0 <= i < n:
            out[i] += 1
    return out


def bin_max(
    points: Iterable[tuple[float, float]], lo: float, hi: float, width: float
) -> list[float]:
    """Max value per bin of (t, value) points (0 for empty bins)."""
    n = max(0, math.ceil((hi - lo) / width))
    out = [0.0] * n
    for t, v in points:
        i = int((t - lo) // width)
        if 0 <= i < n and v > out[i]:
            out[i] = v
    return out
