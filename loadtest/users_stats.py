"""The statistics of a run of users (loadtest.users), as Locust keeps them: per (method, name)
counters and a rounded response-time histogram, failures, and the CSVs with Locust's columns."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any


def _round_rt(ms: float) -> int:
    """Locust's response-time rounding for its histogram (2 significant digits past 100 ms)."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


class StatsEntry:
    """Counters and a rounded response-time histogram for one (method, name)."""

    def __init__(self, method: str, name: str) -> None:
        self.method = method
        self.name = name
        self.num_requests = 0
        self.num_failures = 0
        self.total_response_time = 0.0
        self.min_response_time: float | None = None
        self.max_response_time = 0.0
        self.total_content_length = 0
        self.response_times: dict[int, int] = {}

    def log(self, response_time: float, content_length: int, failed: bool) -> None:
        """Add one request."""
        self.num_requests += 1
        self.num_failures += failed
        self.total_response_time += response_time
        if self.min_response_time is None or response_time < self.min_response_time:
            self.min_response_time = response_time
        self.max_response_time = max(self.max_response_time, response_time)
        self.total_content_length += content_length
        key = _round_rt(response_time)
        self.response_times[key] = self.response_times.get(key, 0) + 1

    def extend(self, other: StatsEntry) -> None:
        """Merge another entry in (for the Aggregated row)."""
        self.num_requests += other.num_requests
        self.num_failures += other.num_failures
        self.total_response_time += other.total_response_time
        if other.min_response_time is not None and (
            self.min_response_time is None or other.min_response_time < self.min_response_time
        ):
            self.min_response_time = other.min_response_time
        self.max_response_time = max(self.max_response_time, other.max_response_time)
        self.total_content_length += other.total_content_length
        for k, v in other.response_times.items():
            self.response_times[k] = self.response_times.get(k, 0) + v

    def percentile(self, fraction: float) -> int:
        """Locust's percentile over the rounded histogram (0 when empty)."""
        return histogram_percentile(self.response_times, self.num_requests, fraction)

    @property
    def avg_response_time(self) -> float:
        """Mean response time in ms."""
        return self.total_response_time / self.num_requests if self.num_requests else 0.0

    @property
    def avg_content_length(self) -> float:
        """Mean body size in bytes."""
        return self.total_content_length / self.num_requests if self.num_requests else 0.0


def histogram_percentile(hist: dict[int, int], total: int, fraction: float) -> int:
    """The smallest value with at least `fraction` of `total` at or below it (Locust's rule)."""
    if total == 0:
        return 0
    wanted = int(total * fraction)
    processed = 0
    for value in sorted(hist, reverse=True):
        processed += hist[value]
        if total - processed <= wanted:
            return value
    return 0


class RequestStats:
    """Per-(method, name) entries plus failures, fed by the `request` event."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], StatsEntry] = {}
        self.failures: dict[tuple[str, str, str], int] = {}
        self.failure_seen: dict[tuple[str, str, str], tuple[float, float]] = {}  # wall clock
        self.start_time = time.monotonic()
        self.end_time: float | None = None

    def on_request(
        self,
        *,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: str | None,
        **_ignored: Any,
    ) -> None:
        """Listener for `events.request`."""
        key = (request_type, name)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = StatsEntry(request_type, name)
        entry.log(response_time, response_length, exception is not None)
        if exception is not None:
            fkey = (request_type, name, exception)
            self.failures[fkey] = self.failures.get(fkey, 0) + 1
            now = time.time()
            first, _last = self.failure_seen.get(fkey, (now, now))
            self.failure_seen[fkey] = (first, now)

    def total(self) -> StatsEntry:
        """The Aggregated row."""
        agg = StatsEntry("", "Aggregated")
        for entry in self.entries.values():
            agg.extend(entry)
        return agg


STATS_COLUMNS: tuple[str, ...] = (
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
)
FAILURES_COLUMNS: tuple[str, ...] = (
    "Method",
    "Name",
    "Error",
    "Occurrences",
    "First Seen",
    "Last Seen",
)
_PERCENTILES = (0.5, 0.66, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0)


def stats_rows(stats: RequestStats, duration: float) -> list[list[str]]:
    """Rows for `_stats.csv` (entries sorted by name, then the Aggregated row)."""
    duration = max(duration, 1e-9)
    rows = []
    entries = sorted(stats.entries.values(), key=lambda e: (e.name, e.method))
    for entry in [*entries, stats.total()]:
        row: list[Any] = [
            entry.method,
            entry.name,
            entry.num_requests,
            entry.num_failures,
            entry.percentile(0.5),
            round(entry.avg_response_time, 2),
            round(entry.min_response_time or 0.0, 2),
            round(entry.max_response_time, 2),
            round(entry.avg_content_length, 2),
            round(entry.num_requests / duration, 4),
            round(entry.num_failures / duration, 4),
        ]
        row.extend(entry.percentile(p) if entry.num_requests else "N/A" for p in _PERCENTILES)
        rows.append([str(v) for v in row])
    return rows


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def write_stats_csv(stats: RequestStats, prefix: str | Path, duration: float) -> list[Path]:
    """Write `<prefix>_stats.csv` and `<prefix>_failures.csv` with Locust's columns."""
    prefix = Path(prefix)
    paths = [Path(f"{prefix}_stats.csv"), Path(f"{prefix}_failures.csv")]
    with paths[0].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(STATS_COLUMNS)
        writer.writerows(stats_rows(stats, duration))
    with paths[1].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FAILURES_COLUMNS)
        for key, count in sorted(stats.failures.items()):
            first, last = stats.failure_seen.get(key, (0.0, 0.0))
            writer.writerow([*key, count, _iso(first), _iso(last)])
    return paths
