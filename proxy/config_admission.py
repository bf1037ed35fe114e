"""The config's admission sections: callers and their caps (`callers`), telling retries apart
(`retry_detect`) and budgeting them (`retry_budget`), the waiting room (`queue`), how refusals
are answered and paced (`shedding`), and traffic from other regions (`region`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .config_fields import Duration, Strict


class CallerConfig(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    cap: int | None = Field(None, ge=0, description="max concurrent upstream requests")
    weight: int = Field(1, ge=1, le=100)
    priority: str = "normal"


class CallersConfig(Strict):
    known: list[CallerConfig] = []
    fair_buckets: int = Field(16, ge=1, le=4096)
    default_cap: int | None = Field(None, ge=0, description="cap for each hashed bucket")

    @model_validator(mode="after")
    def _unique(self) -> CallersConfig:
        names = [c.name for c in self.known]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"caller names must be unique: {', '.join(dupes)}")
        return self


class RetryDetectConfig(Strict):
    fingerprint_cache_size: int = Field(65536, ge=0)
    fingerprint_ttl: Duration = 30.0


class RetryBudgetConfig(Strict):
    enabled: bool = True
    ratio: float = Field(
        0.1, ge=0.0, le=10.0, description="unsolicited retries allowed per recent first try"
    )
    floor_per_s: float = Field(1.0, ge=0.0, description="retries per second always allowed")
    global_ratio: float = Field(0.1, ge=0.0, le=10.0, description="the same, all callers")
    global_floor_per_s: float = Field(10.0, ge=0.0)
    window: Duration = Field(10.0, gt=0, description="deposits expire after this long")


class QueueConfig(Strict):
    max_size: int = Field(20000, ge=0)
    max_wait: Duration = 30.0
    normal_max_wait: Duration = 0.25
    lifo_when_older_than: Duration = Field(
        0.1, description="serve a lane newest-first once its oldest waited this long; 0 = never"
    )
    patience: Duration = Field(
        1.0,
        gt=0,
        description="how long a request without a deadline header is assumed to wait before "
        "its client gives up (until cancellations teach the gate otherwise)",
    )
    learn_patience: bool = True


class SheddingConfig(Strict):
    overload_status: Literal[429, 503] = 503
    deadline_margin: Duration = 0.05
    retry_after_min: Duration = Field(
        0.1,
        description="the least Retry-After of any answer; a booked return is due when the "
        "work queued in front of it is done (a second-long minimum left the backend idle "
        "between the last queued request and the first return)",
    )
    retry_after_unbooked: Duration = Field(
        1.0,
        description="Retry-After of an answer that books no slot (busy, draining, "
        "spillover): it cannot say when there will be room; at least retry_after_min",
    )
    retry_after_max: Duration = 60.0
    slot: Duration = Field(0.1, gt=0)
    slot_grace: Duration = Field(
        0.5, description="early/late tolerance when recognising a return in its booked slot"
    )
    min_return_share: float = Field(
        0.25, gt=0, le=1, description="least share of the learned pace booked for returns"
    )
    max_bookings: int = Field(100000, ge=0, description="booked slots remembered, all callers")
    hold_max: Duration = Field(
        1.0,
        description="hold a paced answer (overload, outage, caller-cap, retry-budget) up to "
        "this long before sending it (at most 3/4 of the time its client has left, never "
        "past its booked return, which the Retry-After counts from the end of the hold); "
        "0 = answer at once",
    )
    busy_lag: Duration = Field(
        0.25,
        description="our own event loop ran this late (two ticks in a row): until it "
        "catches up, a request that would wait in the queue is answered 503 `busy` at once, "
        "unbooked, instead (Sluice, not the backend, is saturated); 0 = never",
    )
    pace_headroom: float = Field(
        1.1,
        ge=1.0,
        le=2.0,
        description="book returns this much faster than their measured share of the pace "
        "(the pace less the fresh baseline): an early return waits briefly in the queue, a "
        "late one leaves capacity idle",
    )

    @model_validator(mode="after")
    def _order(self) -> SheddingConfig:
        if not self.retry_after_min <= self.retry_after_unbooked <= self.retry_after_max:
            raise ValueError("need retry_after_min <= retry_after_unbooked <= retry_after_max")
        return self


class RegionConfig(Strict):
    name: str = "local"
    spillover: Literal["refuse", "spare", "allow"] = "spare"
    spare_utilisation: float = Field(
        0.8, gt=0, le=1, description="under `spare`, fill the limiter only up to this share"
    )
