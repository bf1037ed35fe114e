"""The config's process sections: logs (`logging`), start-up, drain and garbage collection
(`lifecycle`), and the fleet of sidecars this one shares state with (`fleet`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .config_fields import Duration, Strict, duration_text

# The drain grace unless set: long enough for a load balancer's health check to see /readyz
# 503 (an Envoy or HAProxy check every 1-2 s, twice), short enough to leave most of
# drain_timeout to the requests in flight.
DEFAULT_DRAIN_GRACE = 5.0


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(True, description="one line per answer on `sluice.access`")
    access_log_sample: float = Field(
        0.01, ge=0.0, le=1.0, description="share of forwarded successes logged"
    )
    lines_per_s: float = Field(
        100.0,
        ge=0.0,
        le=100_000.0,
        description="Sluice's own answers, forwarded errors and upstream failures: lines a "
        "second logged every one, before the rest are only counted",
    )


class LifecycleConfig(Strict):
    drain_timeout: Duration = Field(
        20.0,
        description="SIGTERM to exit, whatever is in flight (grace included); what still runs "
        "then is answered 503 `draining` (or cut, if its headers were sent) and logged",
    )
    drain_grace: Duration | None = Field(
        None,
        description="the first part of drain_timeout: /readyz is 503 but the listener still "
        "accepts and serves, so load balancers notice before connections are refused; "
        "default min(5s, drain_timeout / 4); must be shorter than drain_timeout",
    )
    raise_nofile: bool = True
    gc_pacing: bool = Field(
        True, description="full garbage collections only when calm (restart to change)"
    )
    gc_full_interval: Duration = Field(60.0, gt=0)
    gc_full_max_deferral: Duration = Field(600.0, gt=0)

    @property
    def grace(self) -> float:
        """Seconds of the drain during which the listener still accepts (`drain_grace`)."""
        if self.drain_grace is not None:
            return self.drain_grace
        return min(DEFAULT_DRAIN_GRACE, self.drain_timeout / 4)

    @model_validator(mode="after")
    def _order(self) -> LifecycleConfig:
        if self.gc_full_interval > self.gc_full_max_deferral:
            raise ValueError("need gc_full_interval <= gc_full_max_deferral")
        return self

    @field_validator("drain_grace")
    @classmethod
    def _grace_within_drain(cls, value: float | None, info: ValidationInfo) -> float | None:
        timeout = info.data.get("drain_timeout")  # absent when it failed its own check
        if value is not None and timeout is not None and value >= timeout > 0:
            raise ValueError(
                f"must be shorter than drain_timeout ({duration_text(timeout)}): the grace is "
                f"part of the drain (got {duration_text(value)})"
            )
        return value


class FleetConfig(Strict):
    """Shared state for a fleet of sidecars behind one load balancer (README, "A fleet of
    sidecars"). Without `redis`, standalone: nothing is shared and no link runs. Read once at
    start-up: a reload that changes this section is refused (restart to change)."""

    redis: str | None = Field(
        None,
        description="redis://[user:password@]host:port/db (rediss:// for TLS, unix:///path); "
        "absent = standalone",
    )
    key_prefix: str = Field("sluice", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    service: str = Field(
        "default",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="the name every sidecar of one fleet shares (it is part of every key)",
    )
    instance: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="this sidecar's id among its peers (default hostname:pid)",
    )
    op_timeout: Duration = Field(
        0.05, gt=0, description="one exchange with Redis; a slower one is abandoned, not waited"
    )
    connect_timeout: Duration = Field(0.5, gt=0)
    tick: Duration | None = Field(
        None, gt=0, description="one exchange every tick (default recovery.batch_interval)"
    )
    hint_ttl: Duration = Field(
        5.0,
        gt=0,
        description="how long peers believe this sidecar's RECOVERY/OUTAGE hint after its "
        "last exchange (renewed every tick while in the mode)",
    )
    hint_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="with a peer's hint, the share of a local threshold that is enough to "
        "enter the mode (never the hint alone)",
    )

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        from urllib.parse import urlsplit

        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme in ("redis", "rediss") and parts.hostname:
            return url
        if parts.scheme == "unix" and parts.path:
            return url
        raise ValueError(
            f"must be redis://host[:port][/db], rediss://... or unix:///path, got {url!r}"
        )
