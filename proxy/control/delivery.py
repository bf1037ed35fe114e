"""A concurrency limit from the backend's delivery rate and unloaded latency (BBR-style).

`limiter.algorithm: delivery` (issue 16), an alternative to the latency-gradient limiter
(`limiter.py`, the default), whose evidence was answer latencies that our own event loop
inflated when it was busy (it now takes each answer's slack out of them). This one keeps the
limit at

    limit = gain x (delivery rate) x (unloaded latency)          (the bandwidth-delay product)

with estimates our own CPU cannot push down:
- the delivery rate is a windowed *maximum* of answers per second over windows in which the
  limit was in use (BBR's max filter): a busy loop can only lower a sample, and a lower sample
  does not lower the maximum; samples from windows where our loop lagged count only when they
  raise it (BBR's app-limited rule);
- the unloaded latency is the `LatencyFloor` (lowest window mean, moves down quickly, never
  drifts up), fed only by windows in which our loop did not lag.
What lowers the limit is evidence the backend gives: pushback (429/503/timeouts) or broken
answers (x `backoff`), or a mean latency that, less our own worst stall, says the backend
queues far past the tolerance (the limit drains to the BDP; a second such window at the BDP
means its capacity fell, and only what it delivers now counts). Finding capacity: STARTUP
multiplies the limit by `slow_start_factor` per window until the delivery rate stops growing
(BBR's full-pipe test) or a queue shows (HyStart's delay test), then the limit follows the
BDP with a probe cycle (one window x `probe_cycle[0]`, three at the BDP); a probe that delivers
more than the maximum so far restarts STARTUP (capacity grew). At the floor with work waiting
and answers coming, a window never holds it there: it probes up.

The internal numbers are `tuning.DeliveryTuning`'s (why each value: docs/tuning.md).
"""

from __future__ import annotations

from collections import deque

from ..config import LimiterConfig
from ..tuning import DELIVERY, DeliveryTuning
from .signals import LatencyFloor
from .window import Window

# What a STARTUP window's latency says about the backend's queue (see `_judge`).
_CLEAR, _UNSURE, _QUEUED = 0, 1, 2


class DeliveryLimiter(Window):
    """Adaptive concurrency limit from delivery rate x unloaded latency; same surface as
    `limiter.Limiter` (feed answers with `add`, close windows with `tick`)."""

    tuning: DeliveryTuning
    measures_pace = True  # its delivery-rate filter is the pace
    # The current window's tallies beyond `Window`'s, zeroed by `_reset_window`.
    _ticks: int
    _waited: int

    def __init__(
        self, config: LimiterConfig, now: float, tuning: DeliveryTuning = DELIVERY
    ) -> None:
        self.config = config
        self.tuning = tuning
        self.value = float(config.initial)
        self.slow_start = False
        self.floor = LatencyFloor(tuning)
        self.latency: float | None = None
        self.last_change = "initial"
        self.knee_at: float | None = None  # last time the BDP, not a ramp, set the limit
        self._rates: deque[float] = deque(maxlen=tuning.bandwidth_windows)
        self._best = 0.0  # STARTUP: the best delivery rate so far
        self._stalled = 0  # STARTUP: windows without `full_pipe` growth
        self._phase = len(tuning.probe_cycle) - 1  # in `probe_cycle`: the first window probes
        self._probe_base = 0.0  # the maximum before the current probe window
        self._at_floor = 0
        self._queued = False  # the last window queued while the limit was at the BDP
        self._full = False  # the backend was seen full since its capacity was last in doubt
        self._history = deque(maxlen=2 * config.stable_windows)
        self._reset_window(now)

    # --- inputs (`add` and `note_lag` are `Window`'s) -------------------------------------
    def tick(
        self, now: float, in_flight: int, may_probe: bool = True, waiting: bool = True
    ) -> bool:
        """Close the window when due; True when the limit changed. `waiting`: work waited
        for the limit since the last tick (queued or refused for it)."""
        self._ticks += 1
        self._waited += waiting
        if now - self._window_start < self._window_length():
            return False
        before = self.limit
        self._close(now)
        return self.limit != before

    # --- outputs ---------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """The concurrency limit in force."""
        return max(self.config.floor, min(self.config.ceiling, int(self.value)))

    @property
    def measuring_since(self) -> float | None:
        """No separate floor re-measurement here (the floor only moves down)."""
        return None

    @property
    def probing(self) -> bool:
        """True while the limit is held low on purpose (never, here)."""
        return False

    def bandwidth(self) -> float | None:
        """The windowed maximum delivery rate (answers/s), None before a saturated window."""
        return max(self._rates) if self._rates else None

    def growing(self) -> bool:
        """True while the limit is still climbing (STARTUP, or a rising recent peak)."""
        return self.slow_start or self._rising()

    def at_knee(self, now: float) -> bool:
        """True while the limit follows the BDP (not ramping), set lately."""
        if self.knee_at is None or self.slow_start:
            return False
        return now - self.knee_at <= self.tuning.knee_memory * self._window_length()

    def pace_known(self) -> bool:
        """Whether the pace is the backend's capacity: it was seen full (a probe that found
        no more delivery, a ramp whose delivery stopped growing, or pushback) since its
        capacity was last in doubt, over a few windows. Before that, delivery only measured
        our own limit (or a queue that slowed it)."""
        return self._full and len(self._rates) >= self.tuning.known_windows

    def pace(self) -> float:
        """Requests/s the backend delivers, to pace returns at: the best recent window
        (BBR's bottleneck bandwidth); until the backend was seen full, at least what the
        limit would deliver at the unloaded latency (the limit, not the backend, held it)."""
        best = max(self._rates) if self._rates else 0.0
        if self.pace_known():
            return best
        latency = self.floor.value or self.latency
        if latency is None or latency <= 0:
            latency = self.tuning.assumed_latency  # nothing measured yet
        return max(best, self.limit / latency)

    # --- control ---------------------------------------------------------------------------
    def enter_slow_start(self, now: float, from_floor: bool) -> None:
        """Find the backend's capacity again (RECOVERY entry). `from_floor`: it just came
        back from an outage or repair: what was learned of it is stale."""
        if from_floor:
            self._full = False
            self._rates.clear()
            if self.floor.value is None:
                # Never seen unloaded (started under load): only a low concurrency shows the
                # unloaded latency the BDP is made of, so the ramp starts at the floor.
                self.value = float(self.config.floor)
            else:
                self.value = float(max(self.config.floor, min(self.limit, self.config.initial)))
        self.slow_start = True
        self._best = 0.0
        self._stalled = 0
        self.last_change = "slow-start"
        self._reset_window(now)

    # --- internals -------------------------------------------------------------------------
    def _reset_window(self, now: float) -> None:
        self._reset_tallies(now)
        self._ticks = 0
        self._waited = 0

    def _close(self, now: float) -> None:
        cfg = self.config
        n = self._ok + self._pushback + self._broken
        span = max(now - self._window_start, 1e-9)
        if n < cfg.min_samples:
            if self._stretched(now):
                self._reset_window(now)
            return
        if self._pushed_back(n):
            self._back_off(now)
        elif self._ok:
            self._judge(now, span)
        self._history.append(self.value)
        self._reset_window(now)

    def _back_off(self, now: float) -> None:
        """Pushback or broken answers: the backend says so itself."""
        cfg = self.config
        self.value = max(float(cfg.floor), self.value * cfg.backoff)
        self._rates = deque(
            (r * cfg.backoff for r in self._rates), maxlen=self.tuning.bandwidth_windows
        )
        self.slow_start = False
        self._full = True
        self.last_change = "backoff"
        self.knee_at = now
        self._restart_cycle()

    def _judge(self, now: float, span: float) -> None:
        cfg = self.config
        tuning = self.tuning
        mean = self._lat_sum / self._ok
        floor = self.floor.value
        lagged = floor is not None and self._lag > tuning.lagged * floor
        if not lagged:
            self.floor.observe(now, mean)
            floor = self.floor.value
            self.latency = (
                mean
                if self.latency is None
                else (self.latency + tuning.latency_alpha * (mean - self.latency))
            )
        assert floor is not None  # observed at least once: the first window cannot lag
        used = self._lat_sum / span / max(self.value, 1.0)
        if used < tuning.used or 2 * self._waited < self._ticks:
            # The traffic, not the limit, set this window's delivery (BBR's app-limited
            # sample): it says nothing about what the backend could do.
            self._at_floor = 0
            if self.slow_start and used < tuning.used / 2:
                self.slow_start = False  # the traffic does not fill what we have: ramp done
            self.last_change = "idle"
            return
        rate = self._ok / span
        best_before = self.bandwidth() or 0.0
        if not lagged or rate > best_before:
            self._rates.append(rate)
        tol = cfg.latency_tolerance
        # No answer was read later than our worst stall in the window: the backend's own
        # latency was at least `low`, at most `mean`. Queueing counts only when `low` shows
        # it, its absence only when `mean` does; our stalls alone can neither cut nor grow.
        low = mean - self._lag
        if low > tol * tuning.queue_cut * floor:
            self._queue_cut(now, rate, floor)
            return
        self._queued = False
        if self.slow_start:
            # HyStart's delay test: a queue at the backend means the pipe is full, whatever
            # the rate says (the first window has nothing to compare its rate with).
            if low > tol * floor:
                self._startup(now, rate, floor, _QUEUED)
            else:
                self._startup(now, rate, floor, _CLEAR if mean <= tol * floor else _UNSURE)
            return
        self._cruise(now, rate, floor)

    def _queue_cut(self, now: float, rate: float, floor: float) -> None:
        """The backend queues far past what we allow. Above the BDP of the best it delivered,
        drain to it (a queue that slows a thrashing backend depresses this window's rate: it
        is no measure of capacity). Already at it, the backend delivers less than it did:
        only what it delivers now counts."""
        tol = self.config.latency_tolerance
        bdp = tol * (self.bandwidth() or rate) * floor
        if self._phase == 0 and not self.slow_start:
            # A probe that found a queue, not more delivery: the pipe is full at the
            # maximum. The cycle goes on at the BDP (a restart would probe again after one
            # window, and a probe every other window thrashes).
            self._full = True
            self._phase = 1
            self._probe_base = 0.0
            self._set(now, bdp, "latency")
            return
        queue_cut = self.tuning.queue_cut
        if self.value > queue_cut * bdp or not self._queued:
            # Above the BDP, or the first slow window at it (its answers were mostly sent
            # before the limit came down): drain to the BDP; the maximum stands.
            self._queued = self.value <= queue_cut * bdp
            self._set(now, bdp, "latency")
        else:
            # A second window that queues at the BDP: the backend delivers less than it
            # did, and only what it delivers now counts.
            self._queued = False
            self._rates = deque([rate], maxlen=self.tuning.bandwidth_windows)
            self._set(now, tol * rate * floor, "latency")
        self.slow_start = False
        self._restart_cycle()

    def _cruise(self, now: float, rate: float, floor: float) -> None:
        """The steady state: the BDP with a probe cycle; a probe that found more restarts
        STARTUP."""
        cfg = self.config
        if self._phase == 0 and self._probe_base and rate > self.tuning.grew * self._probe_base:
            self.slow_start = True  # the probe found more: capacity grew, find it
            self._full = False
            self._best, self._stalled = rate, 0
            self.value = min(float(cfg.ceiling), self.value * cfg.slow_start_factor)
            self.last_change = "growth"
            return
        if self._phase == 0 and self._probe_base:
            self._full = True  # a probe that found no more delivery: the pipe is full
        cycle = self.tuning.probe_cycle
        self._phase = (self._phase + 1) % len(cycle)
        gain = cycle[self._phase]
        self._probe_base = (self.bandwidth() or rate) if self._phase == 0 else 0.0
        # Answers our loop has not read yet hold their slots too: on top of the BDP, what
        # the backend delivers during our worst stall (BBR's allowance for ACK aggregation).
        target = (self.bandwidth() or rate) * (cfg.latency_tolerance * floor * gain + self._lag)
        if self.value <= cfg.floor and target <= cfg.floor:
            self._at_floor += 1
            if self._at_floor >= self.tuning.floor_windows:
                # Work waits, answers come, nothing says the backend is full: probe up.
                self._at_floor = 0
                target = cfg.floor * cfg.slow_start_factor
        else:
            self._at_floor = 0
        self._set(now, target, "probe" if gain > 1.0 else "bdp")

    def _startup(self, now: float, rate: float, floor: float, delay: int) -> None:
        cfg = self.config
        grew = rate >= self.tuning.full_pipe * self._best
        if grew and (delay == _CLEAR or (delay == _UNSURE and self._best > 0)):
            self._best = rate
            self._stalled = 0
            self.value = min(float(cfg.ceiling), self.value * cfg.slow_start_factor)
            self.last_change = "growth"
            return
        if delay == _UNSURE and self._best == 0:
            # Our stall hides the delay and there is no rate to compare with: hold a window.
            self._best = rate
            self.last_change = "own-lag"
            return
        self._stalled += 1
        full_pipe_windows = self.tuning.full_pipe_windows
        if delay == _QUEUED or self._stalled >= full_pipe_windows:
            # A queue ends the ramp, but a queue that slows a thrashing backend also lowers
            # what it delivers: only delivery that stopped growing measures the pipe (the
            # probe after a queue's exit does the rest).
            self._full = self._stalled >= full_pipe_windows
            self.slow_start = False  # the ramp ends: drain to the BDP
            self._restart_cycle()
            self._set(now, cfg.latency_tolerance * (self.bandwidth() or rate) * floor, "bdp")

    def _set(self, now: float, value: float, why: str) -> None:
        cfg = self.config
        self.value = min(float(cfg.ceiling), max(float(cfg.floor), value))
        self.last_change = why
        self.knee_at = now

    def _restart_cycle(self) -> None:
        """After a cut or a ramp: one window at the BDP, then a probe (a cut from a window
        whose delivery the queue itself slowed lands below the backend's workers, and only
        a probe finds them again)."""
        self._phase = len(self.tuning.probe_cycle) - 1
        self._probe_base = 0.0
