"""The interface of a concurrency limiter (`Limit`), and the factory that picks one.

Two limiters implement it: `limiter.Limiter` (latency gradient, the default) and
`delivery.DeliveryLimiter` (delivery rate x unloaded latency; `limiter.algorithm: delivery`).
A user holds a `Limit` and feeds it answers (`add`, `note_lag`), closes its windows (`tick`),
steers it (`enter_slow_start`, `reconfigure`) and reads what it learned; nothing else. Both are
pure: time is passed in.
"""

from __future__ import annotations

from typing import Protocol

from ..config import LimiterConfig
from .delivery import DeliveryLimiter
from .limiter import Limiter
from .signals import LatencyFloor


class Limit(Protocol):
    """An adaptive concurrency limit towards the upstream."""

    # --- inputs ----------------------------------------------------------------------------
    def add(
        self,
        ok: int,
        latency_sum: float,
        pushback: int,
        broken: int,
        clean_ok: int = 0,
        clean_latency_sum: float = 0.0,
        clean_slack_sum: float = 0.0,
    ) -> None:
        """Fold in the answers since the last call: good ones with their summed latency,
        pushback (429/503/timeouts/slow 5xx), broken ones (connect failures, fast 5xx), and
        the good answers to requests sent after `measuring_since` (while it is set), with
        their summed latency and slack (`contracts.Outcome.slack`)."""
        ...

    def note_lag(self, lag: float) -> None:
        """Our own event loop stalled this long: answers read meanwhile look slower than the
        backend was."""
        ...

    def tick(
        self, now: float, in_flight: int, may_probe: bool = True, waiting: bool = True
    ) -> bool:
        """Sample the concurrency and close the window when due; True when `limit` changed.
        `may_probe`: the limit may be lowered on purpose to re-measure the unloaded latency.
        `waiting`: work waited for the limit since the last tick."""
        ...

    # --- control ---------------------------------------------------------------------------
    def enter_slow_start(self, now: float, from_floor: bool) -> None:
        """Find the backend's capacity again by ramping (RECOVERY entry). `from_floor`: the
        backend just came back from an outage or repair, so what was learned is stale."""
        ...

    def reconfigure(self, config: LimiterConfig) -> None:
        """New bounds and gains; what was learned is kept (the limit clamped to the bounds)."""
        ...

    # --- outputs ---------------------------------------------------------------------------
    @property
    def config(self) -> LimiterConfig:
        """The `limiter` config section in force."""
        ...

    @property
    def limit(self) -> int:
        """The concurrency limit in force, within `config.floor` .. `config.ceiling`."""
        ...

    @property
    def least(self) -> int:
        """The lowest the limit goes: `config.floor`, or lower where the backend was seen to
        serve fewer requests at once."""
        ...

    @property
    def floor(self) -> LatencyFloor:
        """The backend's learned unloaded latency (`floor.value`, None before a window)."""
        ...

    @property
    def latency(self) -> float | None:
        """The smoothed mean latency of recent windows (None before one)."""
        ...

    @property
    def slow_start(self) -> bool:
        """True while the limit ramps multiplicatively (after `enter_slow_start`)."""
        ...

    @property
    def knee_at(self) -> float | None:
        """When evidence of the backend's knee (queueing, pushback, the BDP) last set the
        limit; None if never."""
        ...

    @property
    def last_change(self) -> str:
        """Why the limit last moved (or did not): "growth", "latency", "backoff", ..."""
        ...

    @property
    def measuring_since(self) -> float | None:
        """The instant after which sent requests count as clean (`add`'s `clean_*`): they
        are evidence of the limit in force; None when the limiter reads no clean answers."""
        ...

    @property
    def probing(self) -> bool:
        """True while the limit is held low on purpose (no measure of the backend then)."""
        ...

    def growing(self) -> bool:
        """True while the limit is still climbing (a ramp, or a rising recent peak)."""
        ...

    def at_knee(self, now: float) -> bool:
        """True while the limit sits where the backend starts to queue, found lately: goodput
        at this limit is the backend's capacity."""
        ...

    def pace(self) -> float:
        """Requests per second the backend absorbs at the limit, for pacing returns."""
        ...

    def pace_known(self) -> bool:
        """Whether `pace()` is a measurement of the backend's capacity, not an estimate."""
        ...

    @property
    def measures_pace(self) -> bool:
        """Whether this limiter estimates the backend's pace itself (else its user measures
        goodput while the limit is saturated: `admission.estimates`)."""
        ...


def make_limiter(config: LimiterConfig, now: float) -> Limit:
    """The limiter `config.algorithm` names, with its default tuning, started at `now`."""
    if config.algorithm == "delivery":
        return DeliveryLimiter(config, now)
    return Limiter(config, now)
