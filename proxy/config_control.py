"""The config's control sections: the concurrency limiter (`limiter`), entering and leaving
RECOVERY and its batches (`recovery`), and the mode machine (`modes`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .config_fields import Duration, Strict


class LimiterConfig(Strict):
    algorithm: Literal["gradient", "delivery"] = Field(
        "gradient",
        description="gradient: latency gradient (limiter.py); delivery: delivery rate x "
        "unloaded latency, BBR-style (delivery.py; issue 16, being proven)",
    )
    initial: int = Field(16, ge=1)
    floor: int = Field(4, ge=1)
    ceiling: int = Field(1000, ge=1)
    slow_start_factor: float = Field(
        2.0, gt=1.0, le=4.0, description="multiplicative growth per healthy window in slow start"
    )
    knee_growth: float = Field(
        1.0,
        gt=0,
        description="additive growth of the first healthy window after a cut (for queueing or "
        "pushback); each healthy window after it doubles the step, up to slow_start_factor",
    )
    backoff: float = Field(0.9, gt=0, lt=1, description="multiplicative back-off")
    latency_tolerance: float = Field(
        1.25, ge=1.0, description="latency / unloaded latency tolerated before shrinking"
    )
    backpressure_ratio: float = Field(
        0.02, gt=0, le=1, description="share of 429/503/timeouts in a window that backs off"
    )
    min_samples: int = Field(10, ge=1, description="answers a window needs to move the limit")
    window: Duration = Field(0.5, gt=0)
    floor_probe_interval: Duration = Field(
        30.0, description="re-measure unloaded latency when unconfirmed this long; 0 = never"
    )
    floor_probe_fraction: float = Field(
        0.25, gt=0, lt=1, description="limit during a re-measurement, as a share of the limit"
    )
    stable_windows: int = Field(
        4, ge=1, description="windows without growth before the limit counts as settled"
    )

    @model_validator(mode="after")
    def _order(self) -> LimiterConfig:
        if not self.floor <= self.initial <= self.ceiling:
            raise ValueError("need floor <= initial <= ceiling")
        return self


class RecoveryConfig(Strict):
    batch_size: int = Field(16, ge=1)
    batch_interval: Duration = Field(0.1, gt=0)
    enter_queue_depth: int = Field(64, ge=1)
    enter_arrival_ratio: float = Field(3.0, gt=1.0)
    enter_retry_share: float = Field(0.5, gt=0, le=1)
    enter_min_rate: float = Field(
        20.0, ge=0, description="arrivals/s below which surge and retry share are not judged"
    )
    rate_window: Duration = Field(2.0, gt=0, description="window for arrival rate, retry share")
    baseline_halflife: Duration = Field(
        60.0, gt=0, description="half-life of the arrival baseline (frozen outside NORMAL)"
    )
    exit_queue_depth: int = Field(8, ge=0)
    hold: Duration = 5.0


class ModesConfig(Strict):
    protection: Literal["on", "dry-run", "off"] = "on"
    min_dwell: Duration = 2.0
    outage_error_ratio: float = Field(0.5, gt=0, le=1)
    outage_min_samples: int = Field(10, ge=1)
    error_window: Duration = Field(5.0, gt=0, description="window for the upstream error rate")
    fast_error: Duration = Field(0.05, description="a 5xx faster than this counts as broken")
    outage_probe_failures: int = Field(
        2, ge=1, description="consecutive failed probes (with no answers) that mean OUTAGE"
    )
    outage_exit_probes: int = Field(1, ge=1, description="consecutive good probes to leave")
    outage_trickle: int = Field(
        0, ge=0, description="requests forwarded concurrently during OUTAGE (canaries)"
    )
    outage_retry_after_max: Duration = Field(
        4.0,
        description="longest Retry-After while the backend is down (it is paced by the "
        "outage's age up to this)",
    )
    shield_default_ttl: Duration = Field(600.0, gt=0)
    shield_max_ttl: Duration = Field(86400.0, gt=0)
    start_in_recovery_if_loaded: bool = True
    startup_window: Duration = Field(
        10.0, description="how long after start a loaded backend sends us to RECOVERY"
    )
    transitions_kept: int = Field(50, ge=1, le=10000, description="transitions in /status")
