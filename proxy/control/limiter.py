"""The learned concurrency limit towards the upstream (pure: time is passed in).

In the spirit of Netflix's Gradient2 and Envoy's adaptive-concurrency gradient controller:

- The yardstick is the backend's *unloaded* latency (`signals.LatencyFloor`): the lowest mean
  latency of a window, re-measured at reduced concurrency when no window has come near it for
  `floor_probe_interval` (Envoy's periodic minRTT window), first thing when the first window
  ran at a full limit (a start under load: its latency may be a queue's), and at the least
  concurrency whenever the limit sits there (below).
- A window judges the limit it ran at: only answers to requests *sent* since the limit last
  changed count (`measuring_since`). Requests sent before ran at another concurrency, and
  since a new request is sent only once in-flight is under the new limit, the ones sent after
  see the backend as this limit leaves it (no second cut for the queue of the first, no
  overshoot hidden behind answers from below it).
- Our own event loop reads answers late when it is busy. Each answer comes with how long it
  may have waited for us (`Outcome.slack`, from the arrival heartbeat), and a window is judged
  on what the backend served: its answers' latency less their slack, a lower bound (the
  slack bounds our lateness from above). Our lateness can neither cut the limit nor keep it
  from growing. The floor descends, and slow start multiplies, only on latencies as read: a
  slack that overstates our lateness would keep a floor too low, or hide a backend queue.
- A cut scales the limit by tolerance x floor / latency (its square root when deep, at most
  halved). For a backend of W workers this lands the limit near tolerance x W, a backend
  queue of (tolerance - 1) rounds of its workers. Pushback (429/503, timeouts) or broken
  answers past `backpressure_ratio` multiply it by `backoff`.
- A healthy window whose peak concurrency reached most of the limit in force
  (`GradientTuning.used`) grows it: in slow start (RECOVERY's ramp) by `slow_start_factor`,
  otherwise by a step that restarts at `knee_growth` after every cut and doubles with each
  healthy window after it, at most `slow_start_factor` - 1 of the limit (BBRv2's probe-up):
  one request at a time near a knee just found, a few windows to leave a knee the backend
  has outgrown.
- At the floor the limit cannot go lower: a window there whose latency is past tolerance
  re-measures the floor from its answers, all sent at the least concurrency (Envoy's minRTT
  at its minimum concurrency), whatever slowed them: a backend slower than it was, or our own
  loop. The limit then grows from it instead of waiting at the floor for a window that never
  looks fast.
- That floor (`least`) is `limiter.floor`, but never above the concurrency the backend was
  seen to serve: BBR's BDP, the best delivery rate of the last `served_windows` full windows
  that queued (the backend, not the traffic, set the rate; a windowed maximum follows a backend
  that lost workers) times the unloaded latency, at least 1. Else a backend with fewer workers
  than `limiter.floor` keeps a queue no cut can drain, and thrashes.
- A window that did not use the limit leaves it as it is (why not lower it: docs/tuning.md).

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
        self.proven = 0  # the highest concurrency of a window near the floor: no queueing
        self.served = 0.0  # `least`'s evidence: the best of `_served` (0: none measured yet)
        self._served: deque[float] = deque(maxlen=tuning.served_windows)
        self.grown = 0.0  # the limit before a ramp restarted it lower (0: none)
        self.step = float(config.knee_growth)  # the next growth outside slow start
        self._since = now  # answers to requests sent from here on judge the limit in force
        self._reset_window(now)
        self._stage = _IDLE
        self._saved = self.value
        self._history = deque(maxlen=2 * config.stable_windows)

    # --- inputs (`add` and `note_lag` are `Window`'s; the window's worst lag is not read
    # here: each clean answer's own slack is) ----------------------------------------------
    def tick(
        self, now: float, in_flight: int, may_probe: bool = True, waiting: bool = True
    ) -> bool:
        """Sample concurrency; close the window when due. True when the limit changed.
        `waiting` is not read (use is judged by peak concurrency); `may_probe` allows a floor
        re-measurement (False outside NORMAL and RECOVERY: the limit holds nothing back)."""
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
        return self._moved(now, before)

    # --- outputs ---------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """The concurrency limit in force."""
        return max(self.least, int(self.value))

    @property
    def least(self) -> int:
        """The lowest the limit goes: `limiter.floor`, or what the backend was seen to serve
        at once (`served`, rounded, at least 1) where that is lower."""
        floor = self.config.floor
        if self.served <= 0.0:
            return floor
        return max(1, min(floor, round(self.served)))

    @property
    def measuring_since(self) -> float | None:
        """The instant after which sent requests are evidence of the limit in force: when it
        last changed, or a floor re-measurement began."""
        return self._since

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
        at that earlier limit (a guess: the ramp will likely get there); while the floor is
        re-measured, at the limit it restores."""
        limit = float(self.limit)
        if self._stage != _IDLE:
            # Lowered for a moment on purpose and restored after: returns booked meanwhile
            # come back after it, to the restored limit (docs/tuning.md).
            limit = max(limit, self._saved)
        if self.knee_at is None or self.slow_start:
            # (`grown` is dropped once a ramp ends: see `_cut`, `_back_off`)
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
        if from_floor:
            # The backend's capacity is unknown again; what the limit was before stays a
            # hint for optimistic pacing until the ramp finds a knee.
            self.grown = max(self.grown, self.value)
            # From what the traffic before was seen to take without queueing (at least the
            # floor): fresh traffic is served at once, and a weaker backend shows in the
            # first (half) window.
            self.value = max(float(self.least), min(self.value, float(self.proven)))
        elif self.proven:
            # A limit that grew on traffic that never filled it says nothing about the
            # backend: start the ramp from what was seen to cause no queueing. (What it
            # had grown to stays a hint for optimistic pacing until a knee is found.)
            self.grown = self.value
            self.value = max(float(self.least), min(self.value, float(self.proven)))
        self.slow_start = True
        self.step = float(self.config.knee_growth)
        self.last_change = "slow-start"
        self._reset_window(now)
        # The ramp judges what it sends: answers sent before (a surge at the old limit) say
        # nothing about its first window.
        self._since = now

    def reconfigure(self, config: LimiterConfig) -> None:
        """`Window.reconfigure` within `least` (not `limiter.floor`); the limit saved for a
        floor re-measurement is clamped too."""
        value = self.value
        super().reconfigure(config)
        self.value = min(float(config.ceiling), max(float(self.least), value))
        self._saved = min(float(config.ceiling), max(float(self.least), self._saved))

    # --- internals -------------------------------------------------------------------------
    def _reset_window(self, now: float) -> None:
        self._reset_tallies(now)
        self._peak = 0

    def _moved(self, now: float, before: int) -> bool:
        """Whether the limit in force moved from `before`; if so, only what is sent from
        `now` on is evidence of it."""
        if self.limit == before:
            return False
        self._since = now
        return True

    def _note_served(self, now: float, floor: float) -> None:
        """A full window that queued: its delivery rate is what the backend serves, and
        times the unloaded latency, how many it serves at once (its busy workers). The best
        of the last few such windows: `least` follows a backend that lost workers."""
        span = now - self._window_start
        if span > 0.0:
            self._served.append(self._ok / span * floor)
            self.served = max(self._served)

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
                self._since = now
            return
        n = self._ok + self._pushback + self._broken
        enough = n >= self.config.min_samples
        if enough and self._pushed_back(n):
            self._back_off(now)
        elif self._clean_ok >= self.config.min_samples:
            self._judge(now, may_probe)
        else:
            # Too few answers to requests sent at this limit: stretch, then start over.
            if overdue:
                if not self._full():
                    self.slow_start = False  # too little traffic to need a ramp
                self._reset_window(now)
            return
        self._history.append(self.value)
        if (
            may_probe
            and not self.slow_start
            and self._stage == _IDLE
            and self.floor.stale(now, self.config.floor_probe_interval)
        ):
            self._start_probe()
        self._reset_window(now)

    def _close_measurement(self, now: float, overdue: bool) -> None:
        """The window of a floor re-measurement: its clean answers are the new floor."""
        if self._clean_ok >= self.config.min_samples:
            self.floor.reset_to(now, (self._clean_lat - self._clean_slack) / self._clean_ok)
            self._end_probe(restore=True)
            self._reset_window(now)
        elif overdue:  # too little traffic to measure: try again an interval later
            self.floor.confirmed_at = now
            self._end_probe(restore=True)
            self._reset_window(now)

    def _back_off(self, now: float) -> None:
        """Pushback or broken answers past `backpressure_ratio`: the backend says it is full."""
        cfg = self.config
        self.value = max(float(self.least), self.value * cfg.backoff)
        self._knee(now, "backoff")

    def _judge(self, now: float, may_probe: bool) -> None:
        """A window with enough answers sent at this limit and no pushback: learn the floor
        and latency from them, then cut, grow or note it idle by the latency gradient of what
        the backend served (what we measured, less what our own loop may have added)."""
        cfg = self.config
        if may_probe and self.floor.value is None and self._full() and self.limit > cfg.floor:
            # The first answers came at a full limit (a start under load): their latency may
            # be a queue's. The unloaded latency is measured at a low limit first (Envoy's
            # first minRTT window), or the yardstick would hide that queue for good.
            self._start_probe()
            return
        ok = self._clean_ok
        mean = self._clean_lat / ok
        served = mean - self._clean_slack / ok
        self.floor.observe(now, served, upper=mean)
        alpha = self.tuning.latency_alpha
        self.latency = (
            mean if self.latency is None else self.latency + alpha * (mean - self.latency)
        )
        floor = self.floor.value
        assert floor is not None  # just observed
        if served <= floor * self.tuning.floor_confirm:
            self._note_proven(now)
        tolerated = cfg.latency_tolerance * floor
        if served > tolerated and self._full():
            self._note_served(now, floor)  # before the floor it may lower is judged
        if served > tolerated and self.limit <= self.least:
            # Nothing lower to try: at the least concurrency, what the backend serves is its
            # unloaded latency (it is slower than it was).
            self.floor.reset_to(now, served)
            self.last_change = "floor-reset"
        elif served > tolerated:
            self._cut(now, tolerated / served)
        elif self._full():
            self._grow(mean / floor)
            self.last_change = "growth"
        else:
            self.slow_start = False  # the traffic does not use what we have: ramp done
            self.last_change = "idle"

    def _full(self) -> bool:
        """The window's peak concurrency reached most of the limit in force: it measured
        the limit, not the traffic."""
        return self._peak >= self.tuning.used * self.limit

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
        self.value = max(float(self.least), self.value * max(tuning.max_cut, cut))
        self._knee(now, "latency")

    def _knee(self, now: float, why: str) -> None:
        """A cut found where the backend is full: the ramp, its hint, and growth restart."""
        self.grown = 0.0
        self.slow_start = False
        self.step = float(self.config.knee_growth)
        self.last_change = why
        self.knee_at = now

    def _grow(self, read: float) -> None:
        """A healthy window (net of our loop's lateness) that used the limit; `read` is its
        mean latency as read over the floor. Outside slow start by the step, which doubles
        for the next window. Slow start multiplies only on the latency as read; where only
        the slack calls the window healthy it climbs by one (docs/tuning.md)."""
        cfg = self.config
        if self.slow_start:
            value = max(self.value * self._ramp_factor(read), self.value + cfg.knee_growth)
        else:
            value = self.value + self.step
            most = (cfg.slow_start_factor - 1.0) * value
            self.step = max(float(cfg.knee_growth), min(2.0 * self.step, most))
        self.value = min(float(cfg.ceiling), value)

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
        self.value = max(float(self.least), self.value * cfg.floor_probe_fraction)
        self._stage = _DRAINING
        self.last_change = "floor-probe"

    def _end_probe(self, restore: bool) -> None:
        if self._stage == _IDLE:
            return
        self._stage = _IDLE
        if restore:
            self.value = self._saved
