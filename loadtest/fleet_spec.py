"""What the harness and the fleet process agree on: the fleet's spec (written as JSON by the
harness, read by `python -m loadtest.fleet`) and the merge of its shards' records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .identities import IDENTITIES_PER_CALLER


@dataclass
class FleetSpec:
    """What the harness asks the fleet to do (times are absolute monotonic seconds)."""

    seed: int
    regions: list[str]
    targets: dict[str, str]  # region → "http://127.0.0.1:port"
    fresh_rate: dict[str, float]  # region → λ₀
    callers: list[tuple[str, int]]
    profile: str
    timeout: float
    t_start: float
    t_end: float
    backlog: int = 0
    backlog_region: str = ""
    t_release: float | None = None
    prewarm: bool = True
    failover: bool = False
    naive_retries: int = 3
    naive_retry_delay: float = 0.05
    hostile_retries: int = 50
    hostile_rate_cap: float = 600.0
    retry_after_jitter: float = 0.1
    grace: float = 1.5
    csv_prefix: str = ""
    identities_per_caller: int = IDENTITIES_PER_CALLER
    shard: int = 0  # this process's index among `shards` fleet processes
    shards: int = 1

    @property
    def seed_key(self) -> int | str:
        """The seed of this process's random draws (the plain seed when it runs alone)."""
        return self.seed if self.shards == 1 else f"{self.seed}/{self.shard}"

    def backlog_share(self) -> int:
        """This process's part of the backlog N (the first `N mod shards` take one more)."""
        return self.backlog // self.shards + (1 if self.shard < self.backlog % self.shards else 0)

    # When set, the backlog's users are spawned from this instant instead of from t_start:
    # before t_start, so a release at t_start (no warm-up: a cold start) finds every blocked
    # workflow connected and prepared; or shortly before a late release, so their connections
    # are not idle long enough for the proxy's header timeout to close them (Sluice's
    # listen.header_read_timeout, 10 s by default).
    t_backlog_spawn: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetSpec:
        """Build from the JSON the harness wrote."""
        data = dict(data)
        data["callers"] = [tuple(c) for c in data["callers"]]
        return cls(**data)


def merge_outputs(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """One fleet output from the outputs of its shards (one output is returned as is).

    Records are joined (ids are disjoint by construction), counts summed; the release is the
    earliest shard's (drain is measured from it), its writing done when the last shard's was;
    lag samples of every shard count alike.
    """
    if len(outs) == 1:
        return outs[0]
    releases = [o["t_release"] for o in outs if o.get("t_release") is not None]
    written = [o["t_release_written"] for o in outs if o.get("t_release_written") is not None]
    stopped = [o["t_stopped"] for o in outs if o.get("t_stopped") is not None]
    return {
        "t_started": min(o["t_started"] for o in outs),
        "t_release": min(releases) if releases else None,
        "t_release_written": max(written) if written else None,
        "release_prepared": _sum_known([o.get("release_prepared") for o in outs]),
        "t_stopped": max(stopped) if stopped else None,
        "profile": outs[0]["profile"],
        "workflows": sorted((w for o in outs for w in o["workflows"]), key=lambda w: w[0]),
        "attempts": sorted((a for o in outs for a in o["attempts"]), key=lambda a: a[3]),
        "lag": sorted((x for o in outs for x in o["lag"]), key=lambda x: x[0]),
        "dropped_arrivals": sum(o.get("dropped_arrivals", 0) for o in outs),
        "csv": [p for o in outs for p in o.get("csv", [])],
        "pid": [o.get("pid") for o in outs],
        "shards": len(outs),
    }


def _sum_known(values: list[int | None]) -> int | None:
    """The sum of the shards' counts; None when no shard counted (not applicable)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None
