"""The learned concurrency limit towards the upstream (pure: time is passed in).

In the spirit of Netflix's Gradient2 and Envoy's adaptive-concurrency gradient controller:

- The yardstick is the backend's *unloaded* latency (`signals.LatencyFloor`): the lowest mean
  latency of a window, re-measured at reduced concurrency when no window has come near it for
  `floor_probe_interval` (Envoy's periodic minRTT window). Without re-measurement the yardstick
  drifts up under constant load, and the limit with it.
- Each window (`window`, at least a few unloaded latencies so a window always holds answers)
  compares its mean latency with the floor. Above `latency_tolerance` * floor the backend is
  queueing: the limit is scaled by tolerance * floor / latency (at most halved per window).
  For a backend of W workers this lands the limit near tolerance * W, i.e. a backend queue of
  (tolerance - 1) rounds of its workers, never more.
- Pushback (429/503, timeouts) or broken answers past `backpressure_ratio` multiply the limit
  by `backoff`.
- A healthy window whose peak concurrency reached most of the limit (`GradientTuning.used`)
  grows it: by `growth` * sqrt(limit) (Gradient2's queue headroom), by `knee_growth` just
  below a knee found lately, or by `slow_start_factor` in slow start, which RECOVERY turns on
  and the first sign of queueing or pushback turns off. A window that used less learns
  nothing about capacity, so the limit does not grow on idle traffic.

Nothing here states a backend capacity: `initial`, `floor` and `ceiling` only bound the search.
The internal numbers are `tuning.GradientTuning`'s (why each value: docs/tuning.md).
"""

from __future__ import annotations

import math
from collections import deque

from ..config import LimiterConfig
from ..tuning import GRADIENT, GradientTuning
from .signals import LatencyFloor
from .window import Window, rising

__all__ = ["Limiter", "Window", "rising"]  # the last two re-exported: they lived here

# Floor re-measurement stages.
_IDLE, _DRAINING, _MEASURING = 0, 1, 2


class Limiter(Window):
    """Adaptive concurrency limit; feed it answers with `add`, close windows with `tick`."""

    tuning: GradientTuning
    measures_pace = False  # latency says where the knee is, not how fast the backend goes
    # The current window's tallies beyond `Window`'s, zeroed by `_reset_window`.
    _peak: int

    def __init__(
        self, config: LimiterConfig, now: float, tuning: GradientTuning = GRADIENT
    ) -> None:
        self.config = config
        self.tuning = tuning
        self.value = float(config.initial)
        self.slow_start = False
        self.floor = LatencyFloor(tuning)
        self.latency: float | None = None  # smoothed mean latency of recent windows
        self.last_change = "initial"
        self.knee_at: float | None = None  # last time queueing or pushback cut the limit
        # The highest concurrency of a window whose latency stayed near the floor: what the
        # backend has been seen to take without queueing.
        self.proven = 0
        self.grown = 0.0  # the limit before a ramp restarted it lower (0: none)
        # The limit a ramp restarted below while the backend stayed up (RECOVERY entry on a
        # surge): the ramp may climb back to it through our own stalls (0: none).
        self.resume = 0.0
        self._cooldown = False  # the window after a latency cut judges no second cut
        self._reset_window(now)
        self.knee_value = 0.0  # where the last cut put the limit (its estimate of the knee)
        self._stage = _IDLE
        self._saved = self.value
        self._history = deque(maxlen=2 * config.stable_windows)

    # --- inputs (`add` and `note_lag` are `Window`'s) -------------------------------------
    def tick(
        self, now: float, in_flight: int, may_probe: bool = True, waiting: bool = True
    ) -> bool:
        """Sample concurrency; close the window when due. True when the limit changed.

        `waiting` (work waited for the limit) is not read here: this limiter judges use by
        its peak concurrency. `may_probe` allows starting a floor re-measurement (the gate
        passes False outside NORMAL and RECOVERY, where the limit is not what holds traffic
        back).
        """
        if in_flight > self._peak:
            self._peak = in_flight
        if now - self._window_start < self._window_length():
            # A re-measurement moves on as soon as it can: it costs throughput.
            draining_done = self._stage == _DRAINING and in_flight <= self.limit
            measured = self._stage == _MEASURING and self._clean_ok >= self.config.min_samples
            if not (draining_done or measured):
                return False
        before = self.limit
        self._close(now, in_flight, may_probe)
        return self.limit != before

    # --- outputs ---------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """The concurrency limit in force."""
        return max(self.config.floor, int(self.value))

    @property
    def measuring_since(self) -> float | None:
        """While re-measuring the floor: the instant after which sent requests count."""
        return self._window_start if self._stage == _MEASURING else None

    @property
    def probing(self) -> bool:
        """True while the limit is lowered to re-measure the unloaded latency."""
        return self._stage != _IDLE

    def growing(self) -> bool:
        """True while the limit is still climbing (slow start, or a rising recent peak)."""
        if self.slow_start or self._stage != _IDLE:
            return True
        return self._rising()

    def at_knee(self, now: float) -> bool:
        """True while the limit sits where the backend starts to queue (it was cut for
        queueing or pushback lately, and is not ramping or re-measuring): concurrency at
        this limit keeps the backend busy, so goodput now is its capacity."""
        if self.knee_at is None or self.slow_start or self._stage != _IDLE:
            return False
        return now - self.knee_at <= self.tuning.knee_memory * self._window_length()

    def pace(self) -> float:
        """Requests per second the backend absorbs at the limit (Little's law), for pacing.
        While a ramp restarted below where the limit had grown and no knee is known yet,
        at that earlier limit (a guess: the ramp will likely get there)."""
        limit = float(self.limit)
        if self.knee_at is None or self.slow_start:
            # (`grown` is dropped once a ramp ends: see `_close`)
            limit = max(limit, self.grown)
        latency = self.latency or self.floor.value
        if latency is None or latency <= 0:
            return limit / self.tuning.assumed_latency  # nothing measured yet
        return limit / latency

    def pace_known(self) -> bool:
        """Never: this limiter's pace is Little's law at its limit, an estimate, not a
        measurement of what the backend delivers. A user that needs the backend's capacity
        measures goodput while this limit is saturated (`at_knee` says when that counts)."""
        return False

    # --- control ---------------------------------------------------------------------------
    def enter_slow_start(self, now: float, from_floor: bool) -> None:
        """Ramp multiplicatively until the first sign of queueing (RECOVERY entry).

        `from_floor` restarts at the configured floor: the backend just came back from an
        outage or repair, or we started while it was loaded, and its capacity is unknown.
        """
        self._end_probe(restore=True)
        self.resume = 0.0
        if from_floor:
            # The backend's capacity is unknown again; what the limit was before stays a
            # hint for optimistic pacing until the ramp finds a knee.
            self.grown = max(self.grown, self.value)
            # From what the traffic before was seen to take without queueing (at least the
            # floor): fresh traffic is served at once, and a weaker backend shows in the
            # first (half) window.
            self.value = max(float(self.config.floor), min(self.value, float(self.proven)))
        elif self.proven:
            # A limit that grew on traffic that never filled it says nothing about the
            # backend: start the ramp from what was seen to cause no queueing. (What it
            # had grown to stays a hint for optimistic pacing until a knee is found.)
            self.grown = self.value
            self.resume = self.value
            self.value = max(float(self.config.floor), min(self.value, float(self.proven)))
        self.slow_start = True
        self._cooldown = False  # a cut before this ramp says nothing about its first window
        self.last_change = "slow-start"
        self._reset_window(now)

    def reconfigure(self, config: LimiterConfig) -> None:
        """`Window.reconfigure`; the limit saved for a floor re-measurement is clamped too."""
        super().reconfigure(config)
        self._saved = min(float(config.ceiling), max(float(config.floor), self._saved))

    # --- internals -------------------------------------------------------------------------
    def _reset_window(self, now: float) -> None:
        self._reset_tallies(now)
        self._peak = 0

    def _close(self, now: float, in_flight: int, may_probe: bool) -> None:
        # A window short of answers is stretched, up to `max_stretch` lengths.
        overdue = self._stretched(now)
        if self._stage == _MEASURING:
            self._close_measurement(now, overdue)
            return
        if self._stage == _DRAINING:
            # Measure only once our own excess concurrency has left the backend.
            if in_flight <= self.limit or overdue:
                self._stage = _MEASURING
                self._reset_window(now)
            return
        n = self._ok + self._pushback + self._broken
        if n < self.config.min_samples:
            if overdue:
                if self._peak < self.tuning.used * self.value:
                    self.slow_start = False  # too little traffic to need a ramp
                self._reset_window(now)
            return
        mean = self._lat_sum / self._ok if self._ok else None
        if mean is not None and self._slow_by_own_lag(mean):
            self._skip_lagged(now, mean)
            return
        if self._pushed_back(n):
            self._back_off(now)
        elif mean is not None:
            self._judge(now, mean)
        self._history.append(self.value)
        if (
            may_probe
            and not self.slow_start
            and self.floor.stale(now, self.config.floor_probe_interval)
        ):
            self._start_probe()
        self._reset_window(now)

    def _close_measurement(self, now: float, overdue: bool) -> None:
        """The window of a floor re-measurement: its clean answers are the new floor."""
        if self._clean_ok >= self.config.min_samples:
            self.floor.reset_to(now, self._clean_lat / self._clean_ok)
            self._end_probe(restore=True)
            self._reset_window(now)
        elif overdue:  # too little traffic to measure: try again an interval later
            self.floor.confirmed_at = now
            self._end_probe(restore=True)
            self._reset_window(now)

    def _slow_by_own_lag(self, mean: float) -> bool:
        """Our own loop stalled longer than the queueing we tolerate (a wave of arrivals being
        read) and the window looks slow by no more than the stall: its latency may measure
        us, not the backend.

        (A window within tolerance is judged as usual: what we measure is the backend's
        latency plus our delay, an upper bound. So is one slower than the stall explains:
        no answer was read later than the stall made it, so the backend queued. A slow start
        that overshot is cut then, not held for the windows in which our loop has a few ms
        stalls.)"""
        floor = self.floor.value
        if floor is None:
            return False
        tol = self.config.latency_tolerance
        return (
            self._lag > (tol - 1.0) * floor
            and mean > tol * floor
            and mean - self._lag <= tol * floor
        )

    def _skip_lagged(self, now: float, mean: float) -> None:
        """A window `_slow_by_own_lag` judges nothing, but a ramp full of work, with nothing
        against it but our own stall, climbs back towards the limit it restarted below
        (which the backend took without queueing), no further."""
        self.last_change = "own-lag"
        if (
            self.slow_start
            and self._peak >= self.tuning.used * self.value
            and self.value < self.resume
        ):
            # Held below `resume`, the ramp would keep the limit under the backend's workers
            # for as long as the storm that stalls us lasts; past it, a window that looks
            # healthy net of our stall may still have seen the backend queue.
            floor = self.floor.value
            assert floor is not None  # `_slow_by_own_lag` needs one
            factor = self._ramp_factor((mean - self._lag) / floor)
            self.value = min(self.resume, self.value * factor)
            self.last_change = "growth"
            self._history.append(self.value)
        self._reset_window(now)

    def _back_off(self, now: float) -> None:
        """Pushback or broken answers past `backpressure_ratio`: the backend says it is full."""
        cfg = self.config
        self.value = max(float(cfg.floor), self.value * cfg.backoff)
        self.knee_value = self.value
        self.grown = 0.0
        self.slow_start = False
        self.last_change = "backoff"
        self.knee_at = now

    def _judge(self, now: float, mean: float) -> None:
        """A window with good answers and no pushback: learn the floor and latency from it,
        then cut, hold, grow or note it idle by its latency gradient."""
        self.floor.observe(now, mean)
        self.latency = (
            mean
            if self.latency is None
            else self.latency + self.tuning.latency_alpha * (mean - self.latency)
        )
        floor = self.floor.value
        assert floor is not None  # just observed
        if mean <= floor * self.tuning.floor_confirm:
            self._note_proven(now)
        gradient = self.config.latency_tolerance * floor / mean
        if gradient < 1.0 and self._cooldown:
            # Most answers in this window were sent before the last cut, at the old
            # concurrency: they say nothing about the new limit. Judge the next window.
            self._cooldown = False
            self.last_change = "cooldown"
        elif gradient < 1.0:
            self._cut(now, gradient)
        elif self._peak >= self.tuning.used * self.value:
            self._cooldown = False
            self._grow(now, mean / floor)
            self.last_change = "growth"
        else:
            self.slow_start = False  # the traffic does not use what we have: ramp done
            self.last_change = "idle"

    def _note_proven(self, now: float) -> None:
        """A window at floor latency proves the backend takes its concurrency without queueing.
        Little's law gives the window's mean concurrency, with headroom for its peaks (a
        single peak at floor latency proves little: most of it did not queue)."""
        held = self.tuning.proven_headroom * self._lat_sum / max(now - self._window_start, 1e-9)
        self.proven = max(self.proven, min(int(held), self._peak))

    def _cut(self, now: float, gradient: float) -> None:
        """The backend queues past the tolerance: scale the limit down by the gradient.

        A deep cut by its square root: a backend that slows down with its own queue
        (thrashing) makes latency grow faster than concurrency, and the plain gradient would
        cut far below its knee; the next window finishes the cut if needed. Near the knee
        the plain gradient, so the limit settles on it. Never more than halved."""
        tuning = self.tuning
        cut = math.sqrt(gradient) if gradient < tuning.deep_cut else gradient
        self.value = max(float(self.config.floor), self.value * max(tuning.max_cut, cut))
        self.knee_value = self.value  # the cut's estimate of where the knee is
        self.grown = 0.0
        self.slow_start = False
        self.last_change = "latency"
        self.knee_at = now
        self._cooldown = True

    def _grow(self, now: float, ratio: float) -> None:
        """A healthy window that used the limit; `ratio` is its mean latency over the floor."""
        cfg = self.config
        if self.slow_start:
            self.value = min(float(cfg.ceiling), self.value * self._ramp_factor(ratio))
        elif (
            self.knee_at is not None
            and now - self.knee_at <= self.tuning.knee_memory * self._window_length()
            and self.value >= self.tuning.near_knee * self.knee_value
        ):
            # Just below a knee found lately: probe upward gently. A backend that slows down
            # with its own queue (thrashing) loses more to a limit that overshoots by
            # sqrt(limit) every other window than to a slow climb.
            self.value = min(float(cfg.ceiling), self.value + cfg.knee_growth)
        else:
            self.value = min(float(cfg.ceiling), self.value + cfg.growth * math.sqrt(self.value))

    def _ramp_factor(self, ratio: float) -> float:
        """Slow start's growth for a window whose latency is `ratio` x the floor: double while
        nothing queues (then the backend has at least this many workers, so doubling keeps
        its queue within one round of them); once queueing shows, jump straight to the
        estimated knee instead."""
        cfg = self.config
        factor = cfg.slow_start_factor
        if ratio > self.tuning.floor_confirm:
            factor = min(factor, max(1.0, cfg.latency_tolerance / ratio))
        return factor

    def _start_probe(self) -> None:
        """Lower the limit to re-measure the unloaded latency (it is restored after)."""
        cfg = self.config
        self._saved = self.value
        self.value = max(float(cfg.floor), self.value * cfg.floor_probe_fraction)
        self._stage = _DRAINING
        self.last_change = "floor-probe"

    def _end_probe(self, restore: bool) -> None:
        if self._stage == _IDLE:
            return
        self._stage = _IDLE
        if restore:
            self.value = self._saved
