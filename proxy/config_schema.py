"""The config's schema: `Config`, the whole file, one strict, immutable pydantic model per
section, and the checks across sections. Every tunable lives in its section's model with its
default; unknown keys are errors (a typo must not silently fall back to a default). The
sections are grouped by concern in `config_network.py`, `config_admission.py`,
`config_control.py` and `config_process.py`; loading and errors: `config.py`.
"""

from __future__ import annotations

from pydantic import PrivateAttr, model_validator

from .config_admission import (
    CallersConfig,
    QueueConfig,
    RegionConfig,
    RetryBudgetConfig,
    RetryDetectConfig,
    SheddingConfig,
)
from .config_control import LimiterConfig, ModesConfig, RecoveryConfig
from .config_fields import Strict
from .config_network import (
    AdminConfig,
    HeadersConfig,
    ListenConfig,
    TrustConfig,
    UpstreamConfig,
)
from .config_process import FleetConfig, LifecycleConfig, LoggingConfig


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
