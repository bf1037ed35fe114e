"""Sluice's internal tuning: typed, frozen, with the defaults it runs with.

These numbers are not user settings (the config holds those): they sit inside the algorithms,
and most were chosen on the load-test replays. One class per part: `AdmissionTuning` (the gate's
estimates, held refusals and housekeeping), `SchedulerTuning`, `ControlTuning` (the ticker, the
controller, the signals), `WindowTuning` and its two limiter variants, and `EdgeTuning`. Why
each value is what it is: docs/tuning.md. A component takes its tuning when it is built and
keeps it (the default instance below unless told otherwise); a test may build one with a
variant (`dataclasses.replace(GRADIENT, used=0.5)`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class AdmissionTuning:
    """The gate's estimates, held refusals and housekeeping (`admission.estimates`,
    `admission.refusals`, `admission.gate`, `admission.pacing`, `admission.budgets`)."""

    request_start_max: float = 10.0
    """Seconds: a balancer's request-start header (`trust.request_start`) further back than
    this is not believed (its clock is behind ours, or the header is garbage)."""

    throughput_alpha: float = 0.2
    """Weight of the newest tick in the smoothed throughput (good answers per second)."""

    run_min: float = 0.5
    """Seconds of saturated ticks one capacity sample (goodput over the run) spans."""

    samples_kept: float = 10.0
    """Seconds a capacity sample counts for (older ones are dropped)."""

    samples_median: int = 3
    """The measured capacity is the median of the last this many samples (of those kept)."""

    past_knee_share: float = 0.5
    """A run measured past the knee (its answers slower than the limiter tolerates) counts
    as at least this share of the capacity last measured at the knee."""

    capacity_ttl: float = 60.0
    """Seconds without a saturated run after which the measured capacity is forgotten."""

    samples_known: int = 3
    """Capacity samples before the gradient limiter's pace counts as measured."""

    fresh_headroom: float = 1.2
    """The first tier admits fresh arrivals up to this multiple of the baseline rate ..."""

    fresh_burst: float = 0.25
    """... with a burst allowance of this many seconds of that rate ..."""

    fresh_burst_min: float = 2.0
    """... and of at least this many requests."""

    patience_floor: float = 2.0
    """A learnt client patience counts as at least this many times the fast path's minimum
    budget (the deadline margin plus the expected latency)."""

    hold_share: float = 0.75
    """A held refusal waits at most this share of the time its client has left ..."""

    hold_spread: float = 2.0 / 3.0
    """... shortened by up to this share of that, spread evenly over the refusals."""

    hold_min: float = 0.01
    """Seconds: a shorter hold is not worth a timer, and the refusal is sent at once."""

    prune_every: float = 1.0
    """Seconds between the ticker's housekeeping (expired bookings pruned, caps re-read)."""

    budget_buckets: int = 10
    """Time buckets per retry-budget window: deposits expire with this granularity."""

    latency_samples: int = 32
    """The expected latency is at least the median of this many recent requests' latencies,
    a timeout's counted as the time it waited (a censored sample) ..."""

    latency_kept: float = 2.0
    """... of the last this many seconds."""

    booking_slack: int = 64
    """The pacer compacts its per-key heaps once they hold more than twice the live bookings
    plus this many entries (used and expired ones linger until then)."""


@dataclass(frozen=True, kw_only=True)
class SchedulerTuning:
    """The scheduler's tuning (`scheduler.waiter.Wakeups`, `scheduler.queue.TieredQueue`)."""

    wake_chunk: int = 64
    """Refused waiters woken per event-loop iteration when many are refused at once."""

    expiry_slack: int = 1024
    """The queue compacts its expiry heap once it holds more than twice the waiters plus
    this many entries (those of waiters gone linger until then)."""


@dataclass(frozen=True, kw_only=True)
class ControlTuning:
    """The control loop's tuning (`control.ticker.Ticker`, `control.controller.Controller`,
    `control.signals`)."""

    expiry_step: float = 0.01
    """Seconds: between ticks, the ticker wakes at most this often to answer waiters whose
    wait ran out."""

    timer_slack: float = 0.002
    """Seconds a timer may fire early: a probe due this close to a tick starts at it."""

    probe_deadline_factor: float = 2.0
    """A probe that has not finished after this many `upstream.probe_timeout`s ..."""

    probe_deadline_extra: float = 1.0
    """... plus this many seconds is cancelled and counts as failed."""

    saturated_ticks: int = 2
    """Saturated ticks in a row before the mode machine reads the gate as saturated (and, in
    the start-up window, as started under load)."""

    window_buckets: int = 20
    """Time buckets per sliding window of the signals (`signals.SlidingSums`)."""

    patience_kept: int = 128
    """Give-ups (waits of clients that left without a deadline) the patience estimate keeps."""

    patience_quantile: float = 0.1
    """The quantile of those waits taken as the clients' patience."""

    patience_samples: int = 16
    """Give-ups needed before the learnt patience replaces the configured prior."""


@dataclass(frozen=True, kw_only=True)
class WindowTuning:
    """How both limiters time their windows and read their history (`window.Window`)."""

    max_stretch: int = 4
    """A window short of `limiter.min_samples` answers is stretched up to this many lengths,
    then discarded."""

    window_latencies: float = 2.0
    """A window lasts at least this many unloaded latencies."""

    slow_start_window: float = 0.5
    """The share of `limiter.window` a window lasts in slow start."""

    latency_alpha: float = 0.3
    """Weight of the newest window in the smoothed latency (`latency`)."""

    knee_memory: int = 10
    """Windows for which the last cut keeps the limit `at_knee`."""

    growth_margin: float = 1.05
    """The limit counts as growing while the peak of its last `limiter.stable_windows`
    windows beats the peak of the ones before by this factor (`window.rising`)."""

    assumed_latency: float = 0.1
    """Seconds per answer the pace assumes before any latency was measured."""

    floor_confirm: float = 1.1
    """A window whose mean latency is within this factor of the latency floor confirms the
    floor (`signals.LatencyFloor`), and counts as at the floor."""

    floor_descent: float = 0.25
    """The share of the way down to a lower window mean that the floor moves."""


@dataclass(frozen=True, kw_only=True)
class GradientTuning(WindowTuning):
    """The latency-gradient limiter's tuning (`limiter.Limiter`)."""

    used: float = 0.9
    """A window whose peak concurrency stayed below this share of the limit says nothing
    about capacity: the limit does not grow on it (and such a window ends a slow start)."""

    proven_headroom: float = 1.5
    """The concurrency a window at floor latency proves: its mean concurrency (Little's law)
    times this, at most its peak."""

    deep_cut: float = 0.7
    """A latency gradient below this is a deep cut: the limit is scaled by its square root,
    not by the gradient itself."""

    max_cut: float = 0.5
    """One latency cut leaves at least this share of the limit."""

    served_windows: int = 4
    """`served` is the best of this many most recent full windows that queued (a windowed
    maximum, like BBR's bottleneck bandwidth): `least` follows a loss of capacity, and one
    slow window cannot drag it down."""


@dataclass(frozen=True, kw_only=True)
class DeliveryTuning(WindowTuning):
    """The delivery-rate limiter's tuning (`delivery.DeliveryLimiter`)."""

    used: float = 0.8
    """A window says something about capacity only when its mean concurrency (its answers'
    latency over its span) used this share of the limit."""

    bandwidth_windows: int = 6
    """Delivery-rate samples (one per saturated window) the windowed maximum spans."""

    probe_cycle: tuple[float, ...] = (1.25, 1.0, 1.0, 1.0)
    """The steady state's gains over the BDP target, one per saturated window. The first
    entry is the probe (above 1.0); the others hold the BDP."""

    grew: float = 1.1
    """A probe whose window delivered this factor more than the maximum before it found that
    capacity grew: STARTUP again."""

    full_pipe: float = 1.25
    """STARTUP's full-pipe test: delivery must grow by this factor ..."""

    full_pipe_windows: int = 2
    """... within this many windows, or the pipe is full."""

    lagged: float = 0.5
    """Our loop's worst stall past this share of the unloaded latency: the window's latencies
    measure us as much as the backend (they do not feed the floor or the latency average)."""

    queue_cut: float = 1.25
    """A window whose latency, less our worst stall, exceeds `latency_tolerance` x unloaded x
    this shows the backend queueing far past what we allow: the limit drains to the BDP."""

    floor_windows: int = 3
    """Windows at `limiter.floor` with work waiting and nothing saying the backend is full,
    before the limit probes up regardless."""

    known_windows: int = 3
    """Delivery samples the pace needs (besides a backend seen full) to count as known."""


@dataclass(frozen=True, kw_only=True)
class EdgeTuning:
    """The event loop's own helpers at the edge (`edge.arrival`, `edge.gcpacing`)."""

    arrival_period: float = 0.001
    """Seconds between the heartbeats `ArrivalClock` stamps arrivals from."""

    gc_check_every: float = 1.0
    """Seconds between checks whether a full garbage collection is due."""


ADMISSION = AdmissionTuning()
"""The gate's tuning in force."""

SCHEDULER = SchedulerTuning()
"""The scheduler's tuning in force."""

CONTROL = ControlTuning()
"""The control loop's tuning in force."""

GRADIENT = GradientTuning()
"""The gradient limiter's tuning in force."""

DELIVERY = DeliveryTuning()
"""The delivery limiter's tuning in force."""

EDGE = EdgeTuning()
"""The edge's tuning in force."""
