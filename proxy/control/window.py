"""What both concurrency limiters share (`limiter.Limiter`, `delivery.DeliveryLimiter`): the
tallies of the current window, how long a window lasts, the pushback test, whether the limit
is still rising, and reconfiguration. Pure: time is passed in.
"""

from __future__ import annotations

from collections import deque

from ..config import LimiterConfig
from ..tuning import WindowTuning
from .signals import LatencyFloor


def rising(history: deque[float], k: int, margin: float) -> bool:
    """Whether a limit's history (its last 2k windows) is still climbing: the peak of the
    last k windows beats the peak of the k before by the factor `margin`."""
    if len(history) < 2 * k:
        return len(history) > 1 and history[-1] > history[0]
    items = list(history)
    return max(items[k:]) > margin * max(items[:k])


class Window:
    """The base of both limiters: what they tally per window and how long a window lasts.
    A subclass sets every attribute listed here in its `__init__`; the tallies are zeroed by
    `_reset_tallies`."""

    config: LimiterConfig
    tuning: WindowTuning
    value: float
    slow_start: bool
    floor: LatencyFloor
    _history: deque[float]
    _window_start: float
    _ok: int
    _lat_sum: float
    _pushback: int
    _broken: int
    _clean_ok: int
    _clean_lat: float
    _clean_slack: float
    _lag: float

    @property
    def least(self) -> int:
        """The lowest the limit goes (`Limit.least`): `config.floor`, unless a subclass
        learns a lower one."""
        return self.config.floor

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
        """Fold in answers since the last call: good ones with their summed latency, pushback
        (429/503/timeouts/slow 5xx) and broken ones (connect failures, fast 5xx).

        `clean_*` are the good answers to requests *sent* after `measuring_since` (while a
        limiter sets it): requests sent earlier ran at another concurrency. Their slack is
        how long, in sum, they may have waited for our own loop to read them
        (`contracts.Outcome.slack`).
        """
        self._ok += ok
        self._lat_sum += latency_sum
        self._pushback += pushback
        self._broken += broken
        self._clean_ok += clean_ok
        self._clean_lat += clean_latency_sum
        self._clean_slack += clean_slack_sum

    def note_lag(self, lag: float) -> None:
        """Our own event loop stalled this long (a tick came late): answers read during the
        stall look slower than the backend was."""
        if lag > self._lag:
            self._lag = lag

    def _window_length(self) -> float:
        # Long enough that a window always holds answers: a few unloaded latencies.
        tuning = self.tuning
        window = self.config.window
        if self.slow_start:
            window *= tuning.slow_start_window
        floor = self.floor.value
        return window if floor is None else max(window, tuning.window_latencies * floor)

    def _rising(self) -> bool:
        """Whether the limit's recent history is still climbing (`rising`)."""
        return rising(self._history, self.config.stable_windows, self.tuning.growth_margin)

    def _stretched(self, now: float) -> bool:
        """The window is as long as a window short of answers may get."""
        return now - self._window_start >= self.tuning.max_stretch * self._window_length()

    def _reset_tallies(self, now: float) -> None:
        self._window_start = now
        self._ok = 0
        self._lat_sum = 0.0
        self._pushback = 0
        self._broken = 0
        self._clean_ok = 0
        self._clean_lat = 0.0
        self._clean_slack = 0.0
        self._lag = 0.0  # the worst stall of our own event loop in this window

    def reconfigure(self, config: LimiterConfig) -> None:
        """New bounds and gains; what was learned is kept (the limit clamped)."""
        self.config = config
        self.value = min(float(config.ceiling), max(float(config.floor), self.value))
        if self._history.maxlen != 2 * config.stable_windows:
            self._history = deque(self._history, maxlen=2 * config.stable_windows)

    def _pushed_back(self, n: int) -> bool:
        """The backend said it is full, or broke, in enough of the window's `n` answers."""
        ratio = self.config.backpressure_ratio
        return self._pushback >= ratio * n or self._broken >= ratio * n
