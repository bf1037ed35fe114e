"""A concurrency limit from the backend's delivery rate and unloaded latency (BBR-style).

`limiter.algorithm: delivery` (issue 16). The latency-gradient limiter (`limiter.py`) reads
its evidence from answer latencies, which our own event loop inflates when it is busy: a
storm that keeps the loop busy looked like a slow backend, the limit fell to its floor, and
every later window looked slow too, so it never climbed. This one keeps the limit at

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
BDP with a probe cycle (one window x `_PROBE_GAIN`, three at the BDP); a probe that delivers
more than the maximum so far restarts STARTUP (capacity grew). At the floor with work waiting
and answers coming, a window never holds it there: it probes up.
"""

from __future__ import annotations

from collections import deque

from .config import LimiterConfig
from .limiter import Window, rising
from .signals import LatencyFloor

# A window says something about capacity only when its mean concurrency (Little's law: the
# latency of its answers over its span) used this share of the limit.
_USED = 0.8
# Delivery-rate samples the maximum spans, in saturated windows.
_BW_WINDOWS = 6
# Probe cycle of the steady state, as gains over the BDP target, one per saturated window.
# No drain phase (BBR's 0.75): a concurrency limit brought back to the BDP bounds the queue
# within one round trip by itself, and a window below the BDP idles workers for all of it.
_PROBE_GAIN = 1.25
_CYCLE = (_PROBE_GAIN, 1.0, 1.0, 1.0)
# A probe whose window delivered this much more than the maximum before it: capacity grew.
_GREW = 1.1
# STARTUP's full-pipe test: delivery must grow by this factor within this many windows.
_FULL_PIPE = 1.25
_FULL_PIPE_WINDOWS = 2
# Our loop lagged past this share of the unloaded latency: latencies read in the window
# measure us as much as the backend.
_LAGGED = 0.5
# Mean latency past tolerance x unloaded x this: the backend queues far more than we allow,
# so it lost capacity (or something else loads it): drop to what it delivers now.
_QUEUE_CUT = 1.25
# What a STARTUP window's latency says about the backend's queue (see `_judge`).
_CLEAR, _UNSURE, _QUEUED = 0, 1, 2
# A window short of answers is stretched to at most this many lengths, then discarded.
_MAX_STRETCH = 4
# Smoothing of the latency average (expected latency and caps).
_LATENCY_ALPHA = 0.3
# Windows at the floor with work waiting before the limit probes up regardless.
_FLOOR_WINDOWS = 3


class DeliveryLimiter(Window):
    """Adaptive concurrency limit from delivery rate x unloaded latency; same surface as
    `limiter.Limiter` (feed answers with `add`, close windows with `tick`)."""

    # The current window's tallies beyond `Window`'s, zeroed by `_reset_window`.
    _ticks: int
    _waited: int

    def __init__(self, config: LimiterConfig, now: float) -> None:
        self.config = config
        self.value = float(config.initial)
        self.slow_start = False
        self.floor = LatencyFloor()
        self.latency: float | None = None
        self.last_change = "initial"
        self.knee_at: float | None = None  # last time the BDP, not a ramp, set the limit
        self._rates: deque[float] = deque(maxlen=_BW_WINDOWS)
        self._best = 0.0  # STARTUP: the best delivery rate so far
        self._stalled = 0  # STARTUP: windows without _FULL_PIPE growth
        self._phase = len(_CYCLE) - 1  # position in _CYCLE: the first full window probes
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
        return self.slow_start or rising(self._history, self.config.stable_windows)

    def at_knee(self, now: float) -> bool:
        """True while the limit follows the BDP (not ramping), set lately."""
        if self.knee_at is None or self.slow_start:
            return False
        return now - self.knee_at <= 10 * self._window_length()

    def pace_known(self) -> bool:
        """Whether the pace is the backend's capacity: it was seen full (a probe that found
        no more delivery, a ramp whose delivery stopped growing, or pushback) since its
        capacity was last in doubt, over a few windows. Before that, delivery only measured
        our own limit (or a queue that slowed it)."""
        return self._full and len(self._rates) >= 3

    def pace(self) -> float:
        """Requests/s the backend delivers, to pace returns at: the best recent window
        (BBR's bottleneck bandwidth); until the backend was seen full, at least what the
        limit would deliver at the unloaded latency (the limit, not the backend, held it)."""
        best = max(self._rates) if self._rates else 0.0
        if self.pace_known():
            return best
        latency = self.floor.value or self.latency
        if latency is None or latency <= 0:
            latency = 0.1  # nothing measured yet: assume 100 ms answers
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
            if span >= _MAX_STRETCH * self._window_length():
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
        self._rates = deque((r * cfg.backoff for r in self._rates), maxlen=_BW_WINDOWS)
        self.slow_start = False
        self._full = True
        self.last_change = "backoff"
        self.knee_at = now
        self._restart_cycle()

    def _judge(self, now: float, span: float) -> None:
        cfg = self.config
        mean = self._lat_sum / self._ok
        floor = self.floor.value
        lagged = floor is not None and self._lag > _LAGGED * floor
        if not lagged:
            self.floor.observe(now, mean)
            floor = self.floor.value
            self.latency = (
                mean
                if self.latency is None
                else (self.latency + _LATENCY_ALPHA * (mean - self.latency))
            )
        assert floor is not None  # observed at least once: the first window cannot lag
        used = self._lat_sum / span / max(self.value, 1.0)
        if used < _USED or 2 * self._waited < self._ticks:
            # The traffic, not the limit, set this window's delivery (BBR's app-limited
            # sample): it says nothing about what the backend could do.
            self._at_floor = 0
            if self.slow_start and used < _USED / 2:
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
        if low > tol * _QUEUE_CUT * floor:
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
        if self.value > _QUEUE_CUT * bdp or not self._queued:
            # Above the BDP, or the first slow window at it (its answers were mostly sent
            # before the limit came down): drain to the BDP; the maximum stands.
            self._queued = self.value <= _QUEUE_CUT * bdp
            self._set(now, bdp, "latency")
        else:
            # A second window that queues at the BDP: the backend delivers less than it
            # did, and only what it delivers now counts.
            self._queued = False
            self._rates = deque([rate], maxlen=_BW_WINDOWS)
            self._set(now, tol * rate * floor, "latency")
        self.slow_start = False
        self._restart_cycle()

    def _cruise(self, now: float, rate: float, floor: float) -> None:
        """The steady state: the BDP with a probe cycle; a probe that found more restarts
        STARTUP."""
        cfg = self.config
        if self._phase == 0 and self._probe_base and rate > _GREW * self._probe_base:
            self.slow_start = True  # the probe found more: capacity grew, find it
            self._full = False
            self._best, self._stalled = rate, 0
            self.value = min(float(cfg.ceiling), self.value * cfg.slow_start_factor)
            self.last_change = "growth"
            return
        if self._phase == 0 and self._probe_base:
            self._full = True  # a probe that found no more delivery: the pipe is full
        self._phase = (self._phase + 1) % len(_CYCLE)
        gain = _CYCLE[self._phase]
        self._probe_base = (self.bandwidth() or rate) if self._phase == 0 else 0.0
        # Answers our loop has not read yet hold their slots too: on top of the BDP, what
        # the backend delivers during our worst stall (BBR's allowance for ACK aggregation).
        target = (self.bandwidth() or rate) * (cfg.latency_tolerance * floor * gain + self._lag)
        if self.value <= cfg.floor and target <= cfg.floor:
            self._at_floor += 1
            if self._at_floor >= _FLOOR_WINDOWS:
                # Work waits, answers come, nothing says the backend is full: probe up.
                self._at_floor = 0
                target = cfg.floor * cfg.slow_start_factor
        else:
            self._at_floor = 0
        self._set(now, target, "probe" if gain > 1.0 else "bdp")

    def _startup(self, now: float, rate: float, floor: float, delay: int) -> None:
        cfg = self.config
        grew = rate >= _FULL_PIPE * self._best
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
        if delay == _QUEUED or self._stalled >= _FULL_PIPE_WINDOWS:
            # A queue ends the ramp, but a queue that slows a thrashing backend also lowers
            # what it delivers: only delivery that stopped growing measures the pipe (the
            # probe after a queue's exit does the rest).
            self._full = self._stalled >= _FULL_PIPE_WINDOWS
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
        self._phase = len(_CYCLE) - 1
        self._probe_base = 0.0
