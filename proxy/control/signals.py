"""Sliding windows the mode controller and the limiter read (pure: time is passed in).

- `UpstreamHealth`: what the upstream's answers say. Only *broken* answers (connect failures,
  fast 5xx, resets and protocol errors that come back at once) and failed probes point at an
  outage. Slow answers, timeouts under load and the backend's own 429/503 are *pushback*:
  overload, which feeds the adaptive limit and never the mode, or Sluice would flap
  (overload → OUTAGE → forward nothing → probes pass → RECOVERY → overload again).
- `ArrivalRate`: arrivals and unsolicited retries per second, against a baseline that only
  learns in NORMAL (frozen otherwise, so a long surge never becomes the new normal).
- `LatencyFloor`: the backend's unloaded latency, the yardstick of the learned limit.

The request path never touches these directly: it counts into plain integers
(`controller.Tally`), folded in on each tick, so the hot path pays nothing for the windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..tuning import CONTROL, GRADIENT, ControlTuning, WindowTuning

# Outcome classes (small ints: they index the health window's fields).
OK = 0
PUSHBACK = 1  # the backend answered "too busy": 429, 503, a slow 5xx
TIMEOUT = 2  # no answer in time: overload unless nothing else answers either
BROKEN = 3  # connect failure, fast 5xx, fast reset / protocol error
IGNORE = 4  # the client went away: says nothing about the backend

_FAST_FAILURES = frozenset({"reset", "protocol"})


def classify_outcome(status: int | None, latency: float, error: str | None, fast: float) -> int:
    """Map one upstream outcome to OK, PUSHBACK, TIMEOUT, BROKEN or IGNORE.

    `fast` is `modes.fast_error`: a failure quicker than this did no work upstream, so it is a
    sign of a broken backend rather than a busy one.
    """
    if error is None and status is not None:
        if status == 429 or status == 503:
            return PUSHBACK
        if status < 500:
            return OK
        return BROKEN if latency < fast else PUSHBACK
    if error == "cancelled":
        return IGNORE
    if error == "connect":
        return BROKEN
    if error == "timeout":
        return TIMEOUT
    if error in _FAST_FAILURES:
        return BROKEN if latency < fast else PUSHBACK
    return BROKEN


class SlidingSums:
    """Per-field sums over the last `window` seconds, kept in `buckets` time buckets.

    Memory is fixed; expired buckets are zeroed when time reaches them again.
    """

    def __init__(self, window: float, fields: int, buckets: int = CONTROL.window_buckets) -> None:
        self.window = window
        self.fields = fields
        self._n = buckets
        self._width = window / buckets
        self._epochs = [-1] * buckets
        self._sums = [[0.0] * fields for _ in range(buckets)]

    def add(self, now: float, values: tuple[float, ...]) -> None:
        """Add one value per field at time `now`."""
        epoch = int(now // self._width)
        i = epoch % self._n
        row = self._sums[i]
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            for f in range(self.fields):
                row[f] = 0.0
        for f, v in enumerate(values):
            row[f] += v

    def totals(self, now: float) -> list[float]:
        """Sum of each field over the window ending at `now`."""
        epoch = int(now // self._width)
        out = [0.0] * self.fields
        for e, row in zip(self._epochs, self._sums, strict=True):
            if 0 <= epoch - e < self._n:
                for f in range(self.fields):
                    out[f] += row[f]
        return out

    def span(self, now: float) -> float:
        """The time `totals(now)` actually covers: whole older buckets plus the current one's
        elapsed part (so a rate divides by the right duration)."""
        return (self._n - 1) * self._width + (now - (now // self._width) * self._width)

    def reset(self) -> None:
        """Forget everything."""
        self._epochs = [-1] * self._n


@dataclass(frozen=True, slots=True)
class HealthView:
    """The upstream's recent answers and probe streaks, as the mode controller reads them."""

    ok: int
    pushback: int
    timeouts: int
    broken: int
    probe_ok_streak: int
    probe_fail_streak: int

    @property
    def samples(self) -> int:
        """Answers and failures in the window (cancellations excluded)."""
        return self.ok + self.pushback + self.timeouts + self.broken

    @property
    def broken_ratio(self) -> float:
        """Share of broken outcomes (0 with no samples)."""
        n = self.samples
        return self.broken / n if n else 0.0

    @property
    def pushback_ratio(self) -> float:
        """Share of pushback and timeouts: overload, not outage."""
        n = self.samples
        return (self.pushback + self.timeouts) / n if n else 0.0

    @property
    def answering(self) -> bool:
        """The backend answered something (even "busy") in the window: it is reachable."""
        return self.ok + self.pushback > 0


class UpstreamHealth:
    """Upstream outcomes over a sliding window, plus active-probe streaks."""

    def __init__(self, window: float) -> None:
        self._sums = SlidingSums(window, 4)
        self.probe_ok_streak = 0
        self.probe_fail_streak = 0

    def record(self, now: float, ok: int, pushback: int, timeouts: int, broken: int) -> None:
        """Fold in counts of outcomes seen since the last call."""
        if ok or pushback or timeouts or broken:
            self._sums.add(now, (ok, pushback, timeouts, broken))

    def probe(self, ok: bool) -> None:
        """Record one active health probe's result."""
        if ok:
            self.probe_ok_streak += 1
            self.probe_fail_streak = 0
        else:
            self.probe_fail_streak += 1
            self.probe_ok_streak = 0

    def view(self, now: float) -> HealthView:
        """Counts over the window ending at `now`."""
        ok, pushback, timeouts, broken = (int(v) for v in self._sums.totals(now))
        return HealthView(
            ok, pushback, timeouts, broken, self.probe_ok_streak, self.probe_fail_streak
        )

    def reset_window(self) -> None:
        """Forget outcomes (the evidence was acted on: an outage was declared or ended)."""
        self._sums.reset()

    def reset_probes(self) -> None:
        """Start probe streaks afresh (a new mode needs fresh evidence)."""
        self.probe_ok_streak = 0
        self.probe_fail_streak = 0


class ArrivalRate:
    """Arrivals and unsolicited retries per second, and a baseline learnt only in NORMAL.

    The baseline is the rate of first tries: arrivals less retries and solicited returns.
    It stands for fresh traffic (the first tier's allowance, the backend's share left to
    returns), and a cold start's retries, or a seed taken while booked returns come back,
    would count the storm as the normal (sweep seed 39: a seed of 335/s for 15.5/s of fresh
    traffic booked the whole backlog at a quarter of the backend's pace)."""

    def __init__(self, window: float, halflife: float, start: float) -> None:
        self._sums = SlidingSums(window, 3)
        self.window = window
        self.halflife = halflife
        self._start = start
        self._last = start
        self._seen = False  # any arrival yet (the rate counts from the first one)
        self.baseline: float | None = None
        self._seeded_at = start

    def record(self, now: float, arrivals: int, retries: int, returns: int = 0) -> None:
        """Fold in arrivals (all), and the unsolicited retries and solicited returns among
        them, since the last call."""
        if arrivals or retries:
            if not self._seen:
                # Traffic starts when it starts, not when we did: a baseline seeded from a
                # window that began before the first client would be too low, and its
                # first honest second would look like a surge.
                self._seen = True
                self._start = now - self._sums._width
            self._sums.add(now, (arrivals, retries, returns))

    def _span(self, now: float) -> float:
        """The seconds the sums cover: the window, or the time since start, early on."""
        return max(min(self._sums.span(now), now - self._start), 1e-9)

    def rate(self, now: float) -> float:
        """Arrivals per second over the window (over the time since start, early on)."""
        return self._sums.totals(now)[0] / self._span(now)

    def first_rate(self, now: float) -> float:
        """First tries per second (arrivals less retries and solicited returns), over the
        same span as `rate`."""
        arrivals, retries, returns = self._sums.totals(now)
        return max(0.0, arrivals - retries - returns) / self._span(now)

    def retry_share(self, now: float) -> float:
        """Unsolicited retries as a share of arrivals (0 when nothing arrived)."""
        arrivals, retries, _ = self._sums.totals(now)
        return retries / arrivals if arrivals else 0.0

    def update_baseline(self, now: float, learning: bool) -> None:
        """Move the baseline toward the current rate (only while `learning`, i.e. NORMAL).

        The first full window seeds it; after that it is an exponential average with the
        configured half-life, so a sudden 3x step stands out for a long time. For about its
        first half-life it is the plain mean since the seed: a seed taken while traffic was
        still starting (a first request well before the rest) would otherwise hold the
        baseline far too low for minutes, and fresh traffic above it would lose its share.
        """
        dt = now - self._last
        self._last = now
        if not learning or dt <= 0 or not self._seen:
            return  # (nothing arrived yet: idle before the first client is not a rate)
        if now - self._start < self.window:
            return
        rate = self.first_rate(now)
        if self.baseline is None:
            self.baseline = rate
            self._seeded_at = now
            return
        alpha = 1.0 - math.pow(2.0, -dt / self.halflife)
        alpha = max(alpha, dt / max(now - self._seeded_at, dt))
        self.baseline += alpha * (rate - self.baseline)

    def rebase(self, now: float) -> None:
        """Accept the current rate as normal (recovery ended calm at this rate). All
        arrivals, as the surge ratio counts them: the end is judged on that ratio, and a
        baseline of first tries alone would find the same arrivals a surge again."""
        self.baseline = self.rate(now)
        self._last = now

    def surge_ratio(self, now: float) -> float:
        """Current rate over the baseline (0 while there is no baseline)."""
        if self.baseline is None:
            return 0.0
        return self.rate(now) / max(self.baseline, 1e-9)


class Patience:
    """How long clients that send no deadline wait before they give up.

    Learnt from the ones that did give up (a waiter cancelled, a forwarded request whose
    client left): a low quantile of their waits, so the gate answers the others (a paced
    Retry-After) before they time out on their own. Until `min_samples` give-ups were seen,
    the configured prior stands (the `patience_*` of `tuning.ControlTuning`).
    """

    def __init__(self, prior: float, tuning: ControlTuning = CONTROL) -> None:
        self.prior = prior
        self.capacity = tuning.patience_kept
        self.quantile = tuning.patience_quantile
        self.min_samples = tuning.patience_samples
        self._ring: list[float] = []
        self._next = 0
        self._value = prior
        self._dirty = False

    def set_prior(self, prior: float) -> None:
        """A new configured prior (in force until enough give-ups were seen)."""
        self.prior = prior
        if len(self._ring) < self.min_samples:
            self._value = prior

    def observe(self, waited: float) -> None:
        """A client without a deadline gave up after `waited` seconds."""
        if len(self._ring) < self.capacity:
            self._ring.append(waited)
        else:
            self._ring[self._next] = waited
            self._next = (self._next + 1) % self.capacity
        self._dirty = True

    @property
    def samples(self) -> int:
        """Give-ups remembered."""
        return len(self._ring)

    def estimate(self) -> float:
        """Seconds a deadline-less client is expected to wait (recomputed when new data)."""
        if self._dirty:
            self._dirty = False
            if len(self._ring) >= self.min_samples:
                ordered = sorted(self._ring)
                self._value = ordered[int(self.quantile * (len(ordered) - 1))]
        return self._value


class LatencyFloor:
    """The backend's latency when it is not queueing: the limiter's yardstick.

    Fed with each window's *mean* latency (a per-sample minimum would be dragged down by the
    odd fast answer and make a jittery backend look overloaded). It moves part of the way down
    to a lower window (`floor_descent`: one noisy window is not the floor), is *confirmed*
    whenever a window comes within `floor_confirm` of it, and moves up only through an explicit
    re-measurement (`reset_to`), never by drift: under constant load every window is queued,
    and letting the floor creep up to that would let the limit creep up with it.
    """

    def __init__(self, tuning: WindowTuning = GRADIENT) -> None:
        self.tuning = tuning  # `floor_confirm`, `floor_descent` (its limiter's tuning)
        self.value: float | None = None
        self.confirmed_at = 0.0

    def observe(self, now: float, mean: float, upper: float | None = None) -> None:
        """A window's mean latency (from enough samples to mean something). Where it is a
        lower bound (the most our own loop may have added taken out), `upper` is the mean as
        read: the floor descends only as far as that, since a minimum filter keeps a sample
        biased low for good, and every window after it would look queued."""
        if self.value is None:
            self.value = mean
            self.confirmed_at = now
            return
        toward = mean if upper is None else upper
        if toward < self.value:
            self.value += self.tuning.floor_descent * (toward - self.value)
            self.confirmed_at = now
        elif mean <= self.value * self.tuning.floor_confirm:
            self.confirmed_at = now

    def stale(self, now: float, interval: float) -> bool:
        """True when no window came near the floor for `interval` (0 = never stale)."""
        return interval > 0 and self.value is not None and now - self.confirmed_at >= interval

    def reset_to(self, now: float, mean: float) -> None:
        """Replace the floor with a fresh measurement at low concurrency."""
        self.value = mean
        self.confirmed_at = now
