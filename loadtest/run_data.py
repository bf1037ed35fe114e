"""What one arm's run produced, as the analysis reads it: `RunData` and the join key.

Raw records (all times absolute `time.monotonic()` seconds, shared by every process):
- fleet workflows: [id, kind (0 fresh / 1 backlog), home region index, caller index,
  intended start, end (None if unfinished), ok (0/1), attempts]
- fleet attempts: (workflow id, attempt, target region index, sent, done, code, retry-after s)
  where code is "200", "timeout", "connection-error" or "<status> <reason>"
- backend stats (per region): arrivals (t, foreign), completions (t, request id, foreign, gone),
  samples (t, busy, queued), peaks, first good probe after an outage.
- proxy samples (per region): (t, /status document).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .scenario import Scenario


@dataclass
class RunData:
    """Everything one arm's run produced."""

    scenario: Scenario
    arm: str
    seed: int
    capacity_scale: float
    t_start: float
    t_trigger: float
    t_end: float
    t0: float | None
    fleet: dict[str, Any]
    backends: dict[str, dict[str, Any]]
    proxy_samples: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    machine_busy_cores: float | None = None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    # A fleet arm (issue 18): its region's members (backend/sidecar names), the balancer's
    # algorithm, each sidecar's final /status and /metrics counters. Empty / None otherwise.
    members: dict[str, list[str]] = field(default_factory=dict)
    lb: str | None = None
    proxy_final: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxy_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The fleet's shared state (--fleet-redis): its URL, a fault's events, the scraped gauge.
    redis: dict[str, Any] | None = None


def request_id(wf_id: int, attempt: int) -> str:
    """The x-request-id the fleet sends for an attempt (the backend records it)."""
    return f"{wf_id:x}.{attempt}"
