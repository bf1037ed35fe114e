"""What the gate expects of the backend: its pace, a request's latency, a client's patience.

Pure and clock-injected: the gate feeds it each tick's goodput and asks for a refresh.

Pace: with the delivery limiter, its own delivery-rate estimate. With the gradient limiter,
the backend's capacity is measured here as goodput over runs of ticks in which the limiter,
at the knee of the latency curve, was full with work waiting (the median of the last few such
runs, so one run of answers read in a burst, or one slow run, does not move it, and a halving
does within two; a run past the knee, where a thrashing backend delivers less than at it,
counts as at least half of the capacity last measured there); before a few such runs it is
only guessed (what the limit would allow, Little's law at the knee, at least what we measure).
Returns are booked at the pace less the baseline (`pacing.Pacer`), optimistically while the
pace is a guess or the limit still ramps: an early return costs the backend nothing (it waits
or is re-paced), a late one leaves capacity idle and lengthens the drain.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque

from ..config import Config
from ..control.limit import Limit
from ..scheduler.tiers import TIER_FRESH, TIER_SOLICITED, tier_of
from ..tuning import ADMISSION, AdmissionTuning


class RecentLatency:
    """The latencies of the last requests, each counted once: an answer's, or a timeout's time
    waited (a censored sample: its latency was at least that). Their median is a lower bound
    of the median latency, so it never overstates it; answers alone would understate it by
    exactly the requests too slow to answer (survivors' bias), the ones that matter when a
    request is sent with little of its deadline left. Bounded in count and in age (a backend
    that recovered is not judged by what it was)."""

    def __init__(self, size: int, kept: float) -> None:
        self.kept = kept
        self._samples: deque[tuple[float, float]] = deque(maxlen=size)

    def clear(self) -> None:
        """Forget every sample (they were taken at a higher concurrency than now allows)."""
        self._samples.clear()

    def add(self, now: float, latency: float) -> None:
        """A request finished (or was given up) after `latency` seconds."""
        self._samples.append((now, latency))

    def median(self, now: float) -> float:
        """The median of the samples kept (0 with none)."""
        samples = self._samples
        while samples and now - samples[0][0] > self.kept:
            samples.popleft()
        if not samples:
            return 0.0
        values = sorted(v for _, v in samples)
        return values[(len(values) - 1) // 2]  # the lower median: never above it


class Estimates:
    """The gate's estimates, refreshed every tick (and on reconfiguration). The internal
    numbers are `tuning.AdmissionTuning`'s (why each value: docs/tuning.md)."""

    def __init__(self, config: Config, now: float, tuning: AdmissionTuning = ADMISSION) -> None:
        self.config = config
        self.tuning = tuning
        self.expected_latency = 0.0  # what a request forwarded now should take
        self.on_time_for = config.queue.lifo_when_older_than
        self.min_budget = config.shedding.deadline_margin  # the fast path's deadline test
        self.pace = 0.0  # requests/s the backend serves
        self.pace_known = False  # measured, not guessed
        self.book_pace = 0.0  # the pace returns are booked at
        self.fresh_rate = 0.0  # the first tier's allowance, requests/s
        self.fresh_burst = tuning.fresh_burst_min
        self.patience = config.queue.patience  # a client's, when it sends no deadline
        self.throughput = 0.0  # good answers per second, smoothed over ticks
        self.capacity: float | None = None  # goodput/s measured while saturated
        self.capacity_at = now
        self.n_samples = 0  # capacity samples since the capacity was last forgotten
        self._run_start: float | None = None  # the current run of saturated ticks
        self._run_ok = 0.0
        self._run_lat = 0.0  # the run's good answers' summed latency
        self._knee_capacity = 0.0  # the capacity after the last run measured at the knee
        self._samples: deque[tuple[float, float]] = deque()  # (at, goodput/s)
        self.recent = RecentLatency(tuning.latency_samples, tuning.latency_kept)
        self._limit_seen = 0  # the limit at the last refresh

    def observe(self, ok: int, dt: float) -> None:
        """One tick's good answers over `dt` seconds."""
        if dt > 0:
            self.throughput += self.tuning.throughput_alpha * (ok / dt - self.throughput)

    def not_saturated(self, now: float) -> None:
        """A tick with nothing waiting for a full limiter: the saturated run ends."""
        self._run_start = None
        if self.capacity is not None and now - self.capacity_at > self.tuning.capacity_ttl:
            self.capacity = None  # too old to trust: the backend may have changed
            self.n_samples = 0
            self._samples.clear()
            self._knee_capacity = 0.0

    def saturated(
        self,
        now: float,
        ok: int,
        measurable: bool,
        lat_sum: float = 0.0,
        knee_latency: float | None = None,
    ) -> None:
        """A tick in which waiters waited for a full limiter: goodput is what the backend
        can do, and over a run of such ticks it measures its capacity. Not `measurable`
        while something else holds concurrency below the knee on purpose (slow start,
        re-measuring, a batch ramp, OUTAGE's trickle, SHIELD's allow-list).

        `lat_sum` is the tick's good answers' summed latency, `knee_latency` the latency
        the limiter tolerates at the knee (None: not known yet). A run whose answers took
        longer on average measured the backend past its knee, where one that slows with its
        own queue (thrash) delivers less than at it: such a run counts as at least
        `past_knee_share` of the capacity last measured at the knee (the reasons for the
        value: docs/tuning.md). Runs at the knee set the capacity wherever it goes."""
        if not measurable:
            self._run_start = None
            return
        if self._run_start is None:
            self._run_start = now  # goodput counts from the next tick on
            self._run_ok = 0.0
            self._run_lat = 0.0
            return
        self._run_ok += ok
        self._run_lat += lat_sum
        span = now - self._run_start
        if span < self.tuning.run_min - 1e-9:
            return
        if self._run_ok <= 0:
            self._run_start = now  # nothing answered: a stall, not a pace (health's business)
            return
        rate = self._run_ok / span
        past_knee = knee_latency is not None and self._run_lat > knee_latency * self._run_ok
        self._run_start = now
        self._run_ok = 0.0
        self._run_lat = 0.0
        if past_knee:
            rate = max(rate, self._knee_capacity * self.tuning.past_knee_share)
        samples = self._samples
        samples.append((now, rate))
        while samples and now - samples[0][0] > self.tuning.samples_kept:
            samples.popleft()
        self.capacity = self._robust(samples)
        if not past_knee:
            self._knee_capacity = self.capacity
        self.n_samples += 1
        self.capacity_at = now

    def _robust(self, samples: deque[tuple[float, float]]) -> float:
        """The median of the last `samples_median` samples: the best recent sample let one
        run of answers read together (a loop that was busy) book the calendar above what
        the backend delivers, and after a halving kept the old capacity for the whole
        `samples_kept`; a median follows a sustained change within two samples (at the
        defaults) and moves for no single slow or fast run."""
        n = self.tuning.samples_median
        return statistics.median(
            v for _, v in itertools.islice(samples, max(0, len(samples) - n), None)
        )

    def refresh(self, now: float, lim: Limit, baseline: float, patience: float) -> None:
        """Recompute every estimate from the limiter, the arrival baseline and the learnt
        client patience."""
        cfg = self.config
        floor = lim.floor.value or 0.0
        if lim.limit < self._limit_seen:
            # Latencies at a concurrency the limit no longer allows overstate what a request
            # sent now takes, and a bar above every client's deadline would send nothing to
            # show it: the samples start again at the new limit (the controller adds only
            # those of requests sent at the limit in force).
            self.recent.clear()
        self._limit_seen = lim.limit
        # The limiter's latency learns only from answers; timeouts raise it through `recent`.
        self.expected_latency = max(floor, lim.latency or 0.0, self.recent.median(now))
        # Under adaptive LIFO, a waiter of a level served as one queue keeps its place in
        # arrival order for this long after it was read: one unloaded latency.
        self.on_time_for = max(cfg.queue.lifo_when_older_than, floor)
        # The fast path sends a request with a deadline only if it can be met with margin.
        self.min_budget = cfg.shedding.deadline_margin + self.expected_latency
        self._refresh_pace(now, lim, floor)
        self.book_pace = self._booking_pace(lim, baseline)
        tuning = self.tuning
        self.fresh_rate = tuning.fresh_headroom * baseline
        self.fresh_burst = max(tuning.fresh_burst_min, self.fresh_rate * tuning.fresh_burst)
        if cfg.queue.learn_patience:
            self.patience = max(patience, tuning.patience_floor * self.min_budget)
        else:
            self.patience = cfg.queue.patience

    def _refresh_pace(self, now: float, lim: Limit, floor: float) -> None:
        if lim.measures_pace:
            self.pace_known = lim.pace_known()
            self.pace = lim.pace() if self.pace_known else max(lim.pace(), self.throughput)
        elif self.capacity is not None and self.n_samples >= self.tuning.samples_known:
            self.pace = self.capacity
            self.pace_known = True
        else:
            self.pace = max(self.throughput, lim.pace(), self.capacity or 0.0)
            if lim.at_knee(now) and floor > 0:
                self.pace = max(self.pace, lim.limit / (floor * lim.config.latency_tolerance))
            self.pace_known = False

    def _booking_pace(self, lim: Limit, baseline: float) -> float:
        """Optimistic while the limit ramps or the pace is guessed; once measured, the
        headroom widens the returns' share (the pace less the baseline), not the whole
        pace, which would overbook that share by headroom x pace / share."""
        if not self.pace_known and lim.knee_at is None:
            # Not even a knee found: the backend may take far more than we ever sent it.
            return self.pace * lim.config.slow_start_factor**2
        if lim.slow_start or not self.pace_known:
            return self.pace * lim.config.slow_start_factor
        share = max(self.pace - baseline, 0.0)
        return self.pace + share * (self.config.shedding.pace_headroom - 1.0)

    def level_pace(self, level: int, baseline: float) -> float:
        """Requests/s the waiters of `level` can expect: the pace (unboosted, also while
        only guessed), less the fresh arrivals the first tier lets ahead of them."""
        pace = self.pace
        if tier_of(level) != TIER_FRESH:
            # Solicited returns, once the pace is measured, count the fresh arrivals expected
            # (the baseline), not the first tier's cap on them (the allowance): counting the
            # cap judged doomed returns the backend was about to serve. While the pace is a
            # guess the allowance stands: held returns must not crowd fresh traffic's ramp.
            fresh = self.fresh_rate
            if tier_of(level) == TIER_SOLICITED and self.pace_known:
                fresh = baseline
            pace = max(pace - fresh, pace * self.config.shedding.min_return_share)
        return max(pace, 1e-3)

    def cap_latency(self, lim: Limit) -> float:
        """The latency a capped caller's slots turn over at (its cap / this = its rate)."""
        return max(lim.latency or self.expected_latency, 1e-3)
