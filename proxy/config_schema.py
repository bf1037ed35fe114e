"""The config's schema: one strict, immutable pydantic model per section, and `Config`, the
whole file. Every tunable lives here with its default; unknown keys are errors (a typo must
not silently fall back to a default). Loading and errors: `config.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from .config_fields import Cidr, Duration, HeaderName, HostName, Port, Strict, duration_text

# The drain grace unless set: long enough for a load balancer's health check to see /readyz
# 503 (an Envoy or HAProxy check every 1-2 s, twice), short enough to leave most of
# drain_timeout to the requests in flight.
DEFAULT_DRAIN_GRACE = 5.0


class ListenConfig(Strict):
    host: str = "0.0.0.0"
    port: Port = 8080
    backlog: int = Field(4096, ge=1, description="listen(2) backlog; 128 drops a reopening")
    keepalive_timeout: Duration = 75.0
    header_read_timeout: Duration = 10.0
    max_line_size: int = Field(8190, ge=256)
    max_field_size: int = Field(8190, ge=256)
    max_headers: int = Field(128, ge=1, description="how many request header fields")
    max_body_size: int = Field(16 * 1024 * 1024, ge=0, description="0 means unlimited")
    expose_metrics: bool = False


class TlsConfig(Strict):
    """TLS towards an https:// upstream; the files are read at start-up (restart to change)."""

    ca_file: Path | None = Field(
        None,
        description="PEM CA certificates trusted for the upstream's certificate, instead of "
        "the system store",
    )
    cert_file: Path | None = Field(
        None, description="client certificate (PEM, intermediates after it) for mutual TLS"
    )
    key_file: Path | None = Field(
        None, description="the client certificate's unencrypted PEM key; omit if in cert_file"
    )
    server_name: HostName | None = Field(
        None,
        description="the name sent as SNI and checked against the upstream's certificate, "
        "instead of the url's host",
    )
    verify: bool = Field(
        True, description="check the upstream's certificate; off logs a warning at start"
    )


class UpstreamConfig(Strict):
    url: str
    client: Literal["aiohttp", "lean"] = "lean"  # passes the suite aiohttp passes, and its xfails
    connect_timeout: Duration = 1.0
    read_timeout: Duration = 30.0
    pool_size: int = Field(256, ge=1)
    pool_idle_timeout: Duration = Field(
        15.0, description="close idle upstream connections before the backend's idle timeout"
    )
    health_path: str = "/healthz"
    probe_interval: Duration = 1.0
    probe_interval_normal: Duration = 10.0
    probe_timeout: Duration = 1.0
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _check_url(self) -> UpstreamConfig:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port][/prefix], got {self.url!r}")
        return self

    @field_validator("tls")
    @classmethod
    def _tls_needs_https(cls, tls: TlsConfig, info: ValidationInfo) -> TlsConfig:
        # Settings that would silently do nothing (a client certificate never sent) are refused.
        from urllib.parse import urlsplit

        url = info.data.get("url")
        if isinstance(url, str) and urlsplit(url).scheme != "https" and tls != TlsConfig():
            raise ValueError(f"TLS settings need an https:// url (upstream.url is {url!r})")
        return tls


class HeadersConfig(Strict):
    caller_id: HeaderName = "x-caller-id"
    retry_attempt: HeaderName = "x-retry-attempt"
    attempt_aliases: list[HeaderName] = [
        "x-envoy-attempt-count",
        "grpc-previous-rpc-attempts",
        "amz-sdk-request",
    ]
    # Per-call ids that SDKs keep across their own retries: a second sighting is a retry.
    call_ids: list[HeaderName] = ["x-ms-client-request-id", "amz-sdk-invocation-id"]
    origin_region: HeaderName = "x-origin-region"
    priority: HeaderName = "x-priority"
    request_timeout_ms: HeaderName = "x-request-timeout-ms"
    request_deadline_ms: HeaderName = "x-request-deadline-ms"
    request_id: HeaderName = "x-request-id"


class TrustConfig(Strict):
    sources: list[Cidr] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="peers whose caller, priority, region and forwarded headers are believed",
    )
    absolute_deadline: bool = Field(
        False, description="honour x-request-deadline-ms (epoch ms); clocks skew, so off"
    )


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


class AdminConfig(Strict):
    host: str = "127.0.0.1"
    port: Port = 9901
    token_file: Path | None = None
    token_env: str | None = "SLUICE_ADMIN_TOKEN"


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


class Config(Strict):
    """The whole Sluice configuration (one YAML file)."""

    listen: ListenConfig = ListenConfig()
    upstream: UpstreamConfig
    headers: HeadersConfig = HeadersConfig()
    trust: TrustConfig = TrustConfig()
    callers: CallersConfig = CallersConfig()
    retry_detect: RetryDetectConfig = RetryDetectConfig()
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    limiter: LimiterConfig = LimiterConfig()
    queue: QueueConfig = QueueConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    modes: ModesConfig = ModesConfig()
    shedding: SheddingConfig = SheddingConfig()
    region: RegionConfig = RegionConfig()
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    fleet: FleetConfig = FleetConfig()
    _deprecations: tuple[str, ...] = PrivateAttr(default=())

    @property
    def deprecations(self) -> tuple[str, ...]:
        """Warnings for deprecated keys the file set (they were ignored)."""
        return self._deprecations

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        priorities = set(PRIORITY_CLASSES)
        for i, caller in enumerate(self.callers.known):
            if caller.priority not in priorities:
                raise ValueError(
                    f"callers.known.{i}.priority: {caller.priority!r} is not one of "
                    f"{', '.join(PRIORITY_CLASSES)}"
                )
        return self


# Priority classes, highest first; `x-priority` values outside this set are ignored.
PRIORITY_CLASSES: tuple[str, ...] = ("critical", "high", "normal", "low")
