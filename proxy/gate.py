"""The admission gate: admit, defer or shed each request; release deferred work in batches.

One concurrency limiter (`limiter.Limiter`, learned) stands in front of the upstream, with
per-caller caps on top. `admit` is synchronous and O(1):

- NORMAL, under the limit and the caller's cap, a first try from local traffic with no booked
  slot: the fast path. It touches no queue, calls no clock and formats nothing.
- Otherwise the slow path decides, in this order: draining, SHIELD allow-list, a cap of 0,
  an unmeetable deadline, spillover policy, the retry budget (work-conserving), a free slot,
  then a queue (short in NORMAL, `queue.max_wait` in RECOVERY and OUTAGE) or a refusal with a
  paced Retry-After (`pacing.Pacer`).

Queues: one lane per (caller, level), configured callers plus the hashed fair buckets, so
memory is bounded whatever callers arrive. A level is a priority class and a tier; levels are
served in order. The tiers of a priority class:
1. fresh arrivals while they stay within the arrival baseline's rate (x1.2): fresh traffic
   keeps its share whatever happens to the backlog and whatever the pacing error;
2. solicited returns (the request came back in the slot we booked for it): ahead of every
   other arrival of their caller, and never pushed out of a full queue;
3. first tries beyond the baseline (a reopening backlog, and the fresh traffic read behind it);
4. in-budget retries (unsolicited). In one tier with 3, a retry storm served newest-first would
   push every first try read before it past its expiry (hostile clients at x2 of the reopen
   replay: fresh requests read 100-230 ms after the wave were refused behind the retries).
In tiers 3 and 4, where a backlog can pile up, deficit round-robin runs over callers by
weight, so one orchestrator's backlog cannot starve another caller. Tiers 1 and 2 are one
queue across callers, in arrival order (under adaptive LIFO, see below): what enters them is
already bounded (the first tier by its allowance, returns by the calendar that gave them their
times), and round-robin there served a caller with 40 % of the traffic at a quarter of the
pace. After an outage that bounced the busiest caller's returns that came on time, and buried
its newest fresh requests under the older ones held through the outage (backend-outage x2:
caller a's fresh requests read just after recovery waited 0.5-0.6 s, seen with a temporary
per-request trace).
Entries live in OrderedDicts: removing a cancelled waiter is O(1) and it is never forwarded.

Waits: a waiter is answered before its deadline (`x-request-timeout-ms`, minus the margin and
the expected latency) or, without one, before its client's patience runs out (learnt from the
clients that gave up; `queue.patience` until then), with a paced Retry-After: the client
holds the backlog, not us, and it never times out on its own. A newcomer whose expected wait
already exceeds that is refused at once.

Batches: the limit in force (`_eff`) is the learned limit in NORMAL and SHIELD, the OUTAGE
trickle in OUTAGE, and in RECOVERY min(limit, in-flight at the last tick + `batch_size`): so
each `batch_interval` at most `batch_size` *new* concurrent requests enter, never past the
limiter's free slots, while a finished request's slot is handed to the next waiter at once
(one for one, which never raises concurrency). Invariant, restored after every event: when
in-flight is below `_eff`, nothing queued is eligible (everything waiting is held by its
caller's cap), which is what lets the fast path skip the queues.

Pace: the backend's capacity is measured as goodput over runs of ticks in which the limiter,
at the knee of the latency curve, was full with work waiting; pacing books returns at that
pace minus the baseline (`pacing.Pacer`), and wait estimates use it. While it is only
guessed, both are optimistic (x2): an early return costs the backend nothing, a late one
leaves capacity idle.

Adaptive LIFO: on (`queue.lifo_when_older_than: 100ms`) for the fresh, rest and retry tiers,
off for solicited returns. Meta serves newest-first under congestion because the oldest
waiters are the likeliest to time out before they are served. That holds here too: a waiter's
patience is short (a client timeout of about a second), so under a reopening wave FIFO spends
the backend on requests with the least time left, some of which time out while forwarded
(wasted work), while the newest finish in time; the oldest are answered with a paced Retry-After
before they expire, so LIFO costs them a return trip, not a failure. Solicited returns keep
FIFO: they were given a time, and their order is the schedule. In the first tier, "newest"
spares the waiters still on time, read within one unloaded latency (at least
`lifo_when_older_than`): they keep their order, and only the late ones go after newer
arrivals. Plain newest-first passed over every request read in a burst (our loop busy with a
storm reads them together, up to 100 ms late) by each one read after it, for 0.3-0.6 s.

Paced refusals (overload, outage, caller-cap, retry-budget) are answered after a hold
(`Refusal.hold`, see `_held`): a client that ignores Retry-After comes back once per hold,
not once per round trip.

The budgets, caps and mode sit behind small interfaces (`budgets.RetryBudgets`, `CallerCaps`,
the `ModeController`) with in-process defaults, so a fleet-wide store can slot in (§9).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from .budgets import LocalRetryBudgets, RetryBudgets
from .config import PRIORITY_CLASSES, Config, parse_duration
from .contracts import Outcome, Probe, Reason, Refusal, Ticket
from .delivery import DeliveryLimiter
from .limiter import Limiter
from .metrics import Metrics
from .modes import (
    REASON_ERRORS,
    REASON_OPERATOR,
    Event,
    IllegalTransition,
    Mode,
    ModeController,
    Snapshot,
    Transition,
    possible_transitions,
)
from .pacing import Booking, Pacer
from .signals import (
    BROKEN,
    PUSHBACK,
    TIMEOUT,
    ArrivalRate,
    Patience,
    UpstreamHealth,
    classify_outcome,
)

log = logging.getLogger("sluice.gate")
modes_log = logging.getLogger("sluice.modes")

NO_CAP = 1 << 62
_N_PRIO = len(PRIORITY_CLASSES)
# Each priority class has four tiers, served in order: fresh arrivals within the arrival
# baseline (fresh traffic keeps its share), solicited returns (ahead of any other fresh
# arrival of their caller), first tries beyond the baseline, then in-budget retries.
# Queue levels are priority x tier.
_TIERS = 4
_TIER_FRESH, _TIER_SOLICITED, _TIER_REST, _TIER_RETRY = 0, 1, 2, 3
# By tier: served as one queue across callers (see the module docstring), not round-robin.
_IN_ORDER = (True, True, False, False)
_N_LEVELS = _N_PRIO * _TIERS
# Waiter states.
WAITING, ADMITTED, REFUSED, CANCELLED = 0, 1, 2, 3
# Decisions of the slow path.
_ADMIT, _QUEUE, _REFUSE = 0, 1, 2
# Reasons whose Retry-After books no slot (`shedding.retry_after_unbooked`): the client
# should go elsewhere (spillover, draining), or we cannot say when there will be room
# (busy: our own loop, not the backend, is saturated).
_UNBOOKED = frozenset({"spillover", "draining", "busy"})
_CANCELLED_OUTCOME = Outcome(None, 0.0, "cancelled")
# Fresh arrivals in the first tier: up to this multiple of the baseline rate, with a burst
# allowance of this many seconds of it (a wave of first tries takes the whole allowance
# at once, ahead of the fresh arrivals that follow it: keep it short).
_FRESH_HEADROOM = 1.2
_FRESH_BURST = 0.25
# Smoothing of the measured throughput, per tick (about half a second at 100 ms ticks).
_THROUGHPUT_ALPHA = 0.2
# Capacity samples: one per second in which the limiter was saturated >= 70 % of ticks,
# smoothed, forgotten after a minute without a new one.
# Capacity: goodput over a run of saturated ticks, once the run is long enough; the run
# keeps about its last few seconds; forgotten a minute after the last saturated run.
_RUN_MIN = 0.5  # a capacity sample: goodput over this long a run of saturated ticks
_SAMPLES_KEPT = 10.0  # capacity is the best sample of the last this many seconds
_CAPACITY_TTL = 60.0
_SAMPLES_KNOWN = 3  # capacity samples before the pace counts as measured
# Between ticks the ticker wakes (at most this often) to answer waiters whose wait ran out: a
# wait ends at the client's deadline minus the margin, and a whole tick late is past it.
_EXPIRY_STEP = 0.01
# Timers may fire this much early (uvloop rounds them to the millisecond): a probe due at a
# tick must not slip to the next one, which doubled `upstream.probe_interval` at 100 ms.
_TIMER_SLACK = 0.002
# Held answers (`_held`): at most this share of the time their client has left, shortened
# by up to this share of that, evenly (the golden ratio's low-discrepancy sequence:
# deterministic, and no two answers of a wave held alike).
_HOLD_SHARE = 0.75
_HOLD_SPREAD = 2.0 / 3.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_HOLD_MIN = 0.01  # shorter is not worth a timer
# Booked answers that are held: the request cannot be served now, the client has nowhere
# else to go, and its return is booked (not `deadline`: there is no time left to hold; not
# `shield`: an operator's action is answered at once).
_HELD = frozenset({"retry-budget", "overload", "outage", "caller-cap"})
# Refused waiters woken per event-loop iteration (see _Wakeups).
_WAKE_CHUNK = 64


class CallerCaps(Protocol):
    """Where per-caller concurrency caps come from (a fleet-wide store can share them)."""

    def caps(self, names: Sequence[str]) -> list[int | None]:
        """The cap for each caller name (None = no cap, 0 = refused)."""


class ConfiguredCaps:
    """In-process default: `callers.known[].cap`, and `callers.default_cap` for buckets."""

    def __init__(self, config: Config) -> None:
        self._known = {c.name: c.cap for c in config.callers.known}
        self._default = config.callers.default_cap

    def caps(self, names: Sequence[str]) -> list[int | None]:
        """Caps in caller-index order."""
        return [self._known.get(n, self._default) for n in names]


class _Caller:
    """Per-caller accounting (index space: configured callers, then fair buckets)."""

    __slots__ = (
        "allowed",
        "bookings",
        "cap",
        "in_flight",
        "index",
        "label",
        "name",
        "queued",
        "weight",
    )

    def __init__(self, index: int, name: str, label: str, bookings: deque[Booking]) -> None:
        self.index = index
        self.name = name
        self.label = label  # metric label: configured name or "other"
        self.cap = NO_CAP
        self.weight = 1
        self.in_flight = 0
        self.queued = 0
        self.allowed = False  # on the SHIELD allow-list
        self.bookings = bookings  # the pacer's deque for this caller (truthy = slots booked)


def _key(t: Ticket) -> int:
    """What a return slot booked for `t` is matched by: its call id, else its fingerprint."""
    return t.call_key or t.fingerprint


def _by_key(w: Waiter) -> int:
    return w.key


def _read_since(lane: _Lane, cutoff: float) -> Iterator[Waiter]:
    """`lane`'s waiters read at or after `cutoff`, newest first: O(those), which the first
    tier's allowance bounds."""
    return itertools.takewhile(lambda w: w.enqueued >= cutoff, reversed(lane.waiters.values()))


class _Lane:
    """One caller's waiters at one level (priority class and tier), oldest first."""

    __slots__ = ("active", "caller", "deficit", "level", "lifo", "waiters")

    def __init__(self, caller: _Caller, level: int) -> None:
        self.caller = caller
        self.level = level
        self.waiters: OrderedDict[int, Waiter] = OrderedDict()
        self.deficit = 0
        self.active = False
        # Solicited returns keep their order (they were given a time); other tiers may be
        # served newest-first under congestion.
        self.lifo = level % _TIERS != _TIER_SOLICITED

    def __len__(self) -> int:
        return len(self.waiters)

    def pop(self, lifo_after: float, now: float) -> Waiter:
        """The next waiter: the oldest, or the newest once the oldest waited `lifo_after`."""
        waiters = self.waiters
        if self.lifo and lifo_after > 0:
            head = next(iter(waiters.values()))
            if now - head.enqueued > lifo_after:
                return waiters.popitem(last=True)[1]
        return waiters.popitem(last=False)[1]

    def pop_newest(self) -> Waiter:
        """The newest waiter (the one fair eviction pushes out)."""
        return self.waiters.popitem(last=True)[1]


class Waiter:
    """A deferred decision (contracts.Deferred): await `wait()` for None or a Refusal.

    If the awaiting task is cancelled (the client went away) the entry is removed from its
    queue in O(1) and never forwarded; if a slot had just been granted, it is given back.
    """

    __slots__ = (
        "by_deadline",
        "caller",
        "enqueued",
        "expiry",
        "future",
        "gate",
        "key",
        "lane",
        "result",
        "state",
        "ticket",
    )

    def __init__(
        self,
        gate: AdmissionGate,
        ticket: Ticket,
        lane: _Lane,
        key: int,
        now: float,
        expiry: float,
        by_deadline: bool,
    ) -> None:
        self.gate = gate
        self.ticket = ticket
        self.caller = lane.caller
        self.lane = lane
        self.key = key
        self.enqueued = now
        self.expiry = expiry
        self.by_deadline = by_deadline
        self.state = WAITING
        self.result: Refusal | None = None
        self.future: asyncio.Future[None] | None = None

    async def wait(self) -> Refusal | None:
        """Wait for the decision: None means admitted (a slot is held: release it later)."""
        if self.state == WAITING:
            fut = asyncio.get_running_loop().create_future()
            self.future = fut
            try:
                await fut
            except asyncio.CancelledError:
                self.gate._abandon(self)
                raise
        if self.state == ADMITTED:
            return None
        if self.state == CANCELLED:
            return self.gate._refusal_for_cancelled()
        return self.result

    def cancel(self) -> None:
        """Give up waiting without awaiting (O(1)); a granted slot is handed back."""
        self.gate._abandon(self)

    def _resolve(self, state: int, result: Refusal | None, spread: bool = False) -> None:
        self.state = state
        self.result = result
        fut = self.future
        if fut is not None and not fut.done():
            if spread:
                self.gate._wakeups.add(fut)
            else:
                fut.set_result(None)


class _Wakeups:
    """Wakes the tasks of refused waiters `_WAKE_CHUNK` per event-loop iteration.

    A wave judged doomed at a tick (or refused by a drain or SHIELD) is thousands of answers
    to write; woken at once they hold the loop for all of them, and the fresh requests read
    meanwhile wait behind (at x2 of the reopen replay, tens of milliseconds). In chunks, the
    loop polls between them and serves what arrived. The answer is decided (state, result,
    Retry-After) when the waiter is refused; only the writing is spread. Waiters answered at
    their expiry are woken at once: their clients are about to give up.
    """

    __slots__ = ("_pending", "_scheduled")

    def __init__(self) -> None:
        self._pending: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    def add(self, fut: asyncio.Future[None]) -> None:
        """Wake `fut`'s waiter in a later iteration (in order of refusal)."""
        self._pending.append(fut)
        if not self._scheduled:
            self._scheduled = True
            fut.get_loop().call_soon(self._run)

    def _run(self) -> None:
        pending = self._pending
        for _ in range(min(_WAKE_CHUNK, len(pending))):
            fut = pending.popleft()
            if not fut.done():  # (its client may have gone meanwhile)
                fut.set_result(None)
        if pending:
            pending[0].get_loop().call_soon(self._run)
        else:
            self._scheduled = False


class AdmissionGate:
    """Admission control in front of the upstream (implements contracts.Gate)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        caller_names: list[str],
        clock: Callable[[], float] = time.monotonic,
        budgets: RetryBudgets | None = None,
        caps: CallerCaps | None = None,
    ) -> None:
        self._clock = clock
        now = clock()
        self.metrics = metrics
        self.config = config
        self.started_at = now
        dry = config.modes.protection == "dry-run"
        self.modes = ModeController(config, now, dry_run=dry)
        self.limiter: Limiter | DeliveryLimiter = (
            DeliveryLimiter(config.limiter, now)
            if config.limiter.algorithm == "delivery"
            else Limiter(config.limiter, now)
        )
        self.budgets: RetryBudgets = budgets or LocalRetryBudgets(
            config.retry_budget, len(caller_names), now
        )
        self._caps: CallerCaps = caps or ConfiguredCaps(config)
        self.pacer = Pacer(config.shedding, len(caller_names))
        self._wakeups = _Wakeups()
        self.patience = Patience(config.queue.patience)
        self.health = UpstreamHealth(config.modes.error_window)
        self.rates = ArrivalRate(
            config.recovery.rate_window, config.recovery.baseline_halflife, now
        )
        self._names = list(caller_names)
        self._callers: list[_Caller] = []
        self._build_callers(caller_names)
        self._lanes: list[dict[int, _Lane]] = [{} for _ in range(_N_LEVELS)]
        self._active: list[deque[_Lane]] = [deque() for _ in range(_N_LEVELS)]
        self._active_weight = [0] * _N_LEVELS
        self._queued = 0
        self._queued_level = [0] * _N_LEVELS
        self._fresh_tokens = 0.0  # fresh arrivals owed the first tier (the baseline's rate)
        self._tokens_at = now
        self._heap: list[tuple[float, int, Waiter]] = []
        self._seq = 0
        self.in_flight = 0
        self._eff = self.limiter.limit
        self._fast = not dry
        self._draining = False
        # Counters folded into the signals on each tick (plain ints: the hot path stays cheap).
        self._arrivals = 0
        self._retries = 0
        self._n_ok = 0
        self._lat_sum = 0.0
        self._n_clean = 0  # good answers sent during a floor re-measurement
        self._clean_sum = 0.0
        self._measuring_since: float | None = None
        self._n_push = 0
        self._n_timeout = 0
        self._n_broken = 0
        self._broken_streak = 0  # broken answers since the last good one
        self._overloaded = 0  # overload refusals since the last tick
        self._saturated_ticks = 0
        self._loaded_at_start = False  # saturated during the start-up window
        self._throughput = 0.0  # good answers per second, smoothed over ticks
        self._last_tick = now
        # Our own loop's worst stall lately (a tick that came late) and when: a request read
        # at the end of a stall waited that long in its socket before we saw it, so its
        # client's clock is that far ahead of the `arrived` we measure.
        self._stall = 0.0
        self._stall_at = now
        self._lag = 0.0  # how late the last tick ran
        self._busy = False  # two ticks in a row ran `shedding.busy_lag` late: we are saturated
        self._capacity: float | None = None  # goodput/s measured while saturated
        self._capacity_at = now
        self._run_start: float | None = None  # the current run of saturated ticks
        self._run_ok = 0.0
        self._samples: deque[tuple[float, float]] = deque()  # (at, goodput/s) while saturated
        self._n_samples = 0  # capacity samples since the capacity was last forgotten
        self._mode_backlog = 0  # requests held or shed since the mode began
        self._hold_phase = 0.0  # the spread of held answers (`_held`)
        self._last_prune = now
        self._released_this_tick = 0
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe: Probe | None = None
        self._next_probe = now
        self._last_probe_ok = True
        self._configure(config)
        self._prio_gauges = [metrics.queue_depth.labels(p) for p in PRIORITY_CLASSES]
        # Bound up front: no series appears on the request path (or on a transition).
        self._transition_children = {
            (a, b, r): metrics.transitions.labels(a.value, b.value, r)
            for a, b, r in possible_transitions()
        }
        metrics.set_mode(self.modes.state.value)
        metrics.dry_run.set(1 if dry else 0)
        metrics.limit.set(self.limiter.limit)

    # --- configuration ---------------------------------------------------------------------
    def _build_callers(self, names: Sequence[str]) -> None:
        known = {c.name: c for c in self.config.callers.known}
        old = {c.name: c for c in self._callers}
        callers = []
        for i, name in enumerate(names):
            c = old.get(name)
            if c is None:
                label = name if name in known else "other"
                c = _Caller(i, name, label, self.pacer.bookings[i])
            c.index = i
            c.bookings = self.pacer.bookings[i]
            c.weight = known[name].weight if name in known else 1
            callers.append(c)
        for c, cap in zip(callers, self._caps.caps(names), strict=True):
            c.cap = NO_CAP if cap is None else cap
        self._callers = callers
        self._n_known = len(self.config.callers.known)

    def _configure(self, config: Config) -> None:
        """Cache what the request path reads from the config."""
        self.config = config
        sh = config.shedding
        self._margin = sh.deadline_margin
        self._fast_error = config.modes.fast_error
        self._streak_limit = config.modes.outage_min_samples
        self._overload_status = sh.overload_status
        self._spillover = config.region.spillover
        self._spare = config.region.spare_utilisation
        self._budget_on = config.retry_budget.enabled
        self._lifo_after = config.queue.lifo_when_older_than
        self._hold_max = sh.hold_max
        self._busy_lag = sh.busy_lag
        self._expected_latency = 0.0
        self._min_budget = self._margin
        self._refresh_estimates(self._clock())

    def _refresh_estimates(self, now: float) -> None:
        lim = self.limiter
        floor = lim.floor.value or 0.0
        # What a request forwarded now should take: recent latency (queueing included).
        self._expected_latency = max(floor, lim.latency or 0.0)
        # Under adaptive LIFO, a waiter of a level served as one queue keeps its place
        # in arrival order for this long after it was read: one unloaded latency.
        self._on_time_for = max(self._lifo_after, floor)
        # The fast path sends a request with a deadline only if it can be met with margin.
        self._min_budget = self._margin + self._expected_latency
        # The backend's pace: its best goodput over recent runs of ticks spent saturated
        # (`_measure_capacity`), once there are a few such runs; before that, a guess (what
        # the limit would allow, Little's law at the knee, at least what we measure and
        # what the first runs showed), which is booked optimistically.
        at_knee = lim.at_knee(now)
        if isinstance(lim, DeliveryLimiter):
            self._pace_known = lim.pace_known()
            self._pace = lim.pace() if self._pace_known else max(lim.pace(), self._throughput)
        elif self._capacity is not None and self._n_samples >= _SAMPLES_KNOWN:
            self._pace = self._capacity
            self._pace_known = True
        else:
            self._pace = max(self._throughput, lim.pace(), self._capacity or 0.0)
            if at_knee and floor > 0:
                self._pace = max(self._pace, lim.limit / (floor * lim.config.latency_tolerance))
            self._pace_known = False
        # Book returns optimistically while the limit is still ramping: a return that comes
        # early costs the backend nothing (it waits or is re-paced), one booked late leaves
        # capacity idle and lengthens the drain.
        if not self._pace_known and lim.knee_at is None:
            # Not even a knee found: the backend may take far more than we ever sent it.
            boost = lim.config.slow_start_factor**2
        elif lim.slow_start or not self._pace_known:
            boost = lim.config.slow_start_factor
        else:
            boost = 0.0
        if boost:
            self._book_pace = self._pace * boost
        else:
            # Measured: the headroom widens the returns' share (the pace less the baseline),
            # not the whole pace, which would overbook that share by headroom x pace / share.
            base = self.rates.baseline or 0.0
            share = max(self._pace - base, 0.0)
            self._book_pace = self._pace + share * (self.config.shedding.pace_headroom - 1.0)
        # Fresh arrivals up to the baseline rate (with headroom) go in the first tier.
        baseline = self.rates.baseline or 0.0
        self._fresh_rate = _FRESH_HEADROOM * baseline
        self._fresh_burst = max(2.0, self._fresh_rate * _FRESH_BURST)
        if self.config.queue.learn_patience:
            self._patience = max(self.patience.estimate(), 2 * self._min_budget)
        else:
            self._patience = self.config.queue.patience

    def reconfigure(self, config: Config) -> None:
        """Apply a new config atomically; learned limit, budgets, queues and mode are kept."""
        now = self._clock()
        names = [c.name for c in config.callers.known] + [
            f"bucket-{i}" for i in range(config.callers.fair_buckets)
        ]
        old = self.config
        self.config = config
        self.pacer.reconfigure(config.shedding, len(names))
        if isinstance(self._caps, ConfiguredCaps):
            self._caps = ConfiguredCaps(config)
        self._build_callers(names)
        self._names = names
        self.limiter.reconfigure(config.limiter)
        self.budgets.reconfigure(config.retry_budget, len(names), now)
        self.modes.reconfigure(config)
        self.patience.set_prior(config.queue.patience)
        if old.modes.error_window != config.modes.error_window:
            self.health = UpstreamHealth(config.modes.error_window)
        rec, old_rec = config.recovery, old.recovery
        if (rec.rate_window, rec.baseline_halflife) != (
            old_rec.rate_window,
            old_rec.baseline_halflife,
        ):
            baseline = self.rates.baseline
            self.rates = ArrivalRate(rec.rate_window, rec.baseline_halflife, now)
            self.rates.baseline = baseline
        if old.modes.protection != config.modes.protection:
            self._set_dry_run(config.modes.protection == "dry-run", now)
        self._configure(config)
        self._set_eff(now, batch=False)
        self._pump(now)

    # --- the request path ------------------------------------------------------------------
    def admit(self, ticket: Ticket) -> Refusal | Waiter | None:
        """Admit now (None, a slot is held), refuse (Refusal), or defer (Waiter, await it)."""
        try:
            c = self._callers[ticket.caller_index]
        except IndexError:
            c = self._callers[self._n_known + ticket.caller_index % max(1, self._n_buckets())]
        self._arrivals += 1
        if (
            self._fast
            and self.in_flight < self._eff
            and c.in_flight < c.cap
            and not ticket.is_retry
            and ticket.origin_region is None
            and not c.bookings
        ):
            d = ticket.deadline
            if d is None or d - ticket.arrived >= self._min_budget:
                self.in_flight += 1
                c.in_flight += 1
                ticket.gate_state = c
                if self._budget_on:
                    self.budgets.deposit(c.index)
                return None
        return self._admit_slow(ticket, c)

    def release(self, ticket: Ticket, outcome: Outcome) -> None:
        """Give the slot back and learn from the outcome (once per admission; extra calls
        are ignored)."""
        c = ticket.gate_state
        if c is None:
            return
        ticket.gate_state = None
        self.in_flight -= 1
        c.in_flight -= 1
        status = outcome.status
        kind_ok = False
        if outcome.good:
            kind_ok = True
            self._n_ok += 1
            self._lat_sum += outcome.latency
            since = self._measuring_since
            if since is not None and self._clock() - outcome.latency >= since:
                self._n_clean += 1
                self._clean_sum += outcome.latency
        else:
            kind = classify_outcome(status, outcome.latency, outcome.error, self._fast_error)
            if outcome.error == "cancelled" and ticket.deadline is None:
                self.patience.observe(self._clock() - ticket.arrived)  # its client left
            if kind == PUSHBACK:
                self._n_push += 1
            elif kind == TIMEOUT:
                self._n_timeout += 1
            elif kind == BROKEN:
                self._n_broken += 1
                self._broken_streak += 1
                if self._broken_streak >= self._streak_limit:
                    self._broken_now()
        if kind_ok:
            self._broken_streak = 0
        if self._queued and self.in_flight < self._eff:
            self._pump(self._clock())

    def _broken_now(self) -> None:
        """A run of broken answers (connect failures, fast 5xx) with nothing good between:
        the backend is down. OUTAGE now, not at the next tick and not once the broken share
        of a window that still remembers the healthy seconds before passes the threshold:
        every request forwarded meanwhile gets the backend's own error instead of `outage`."""
        mode = self.modes.state
        if mode is not Mode.NORMAL and mode is not Mode.RECOVERY:
            return
        now = self._clock()
        n = self._broken_streak
        tr = self.modes.apply(Event.BROKEN, now, REASON_ERRORS, f"{n} broken answers in a row")
        self._on_transition(tr, now)

    def _queued_by_priority(self) -> list[int]:
        q = self._queued_level
        return [sum(q[p * _TIERS : (p + 1) * _TIERS]) for p in range(_N_PRIO)]

    def _n_buckets(self) -> int:
        return len(self._callers) - self._n_known

    def _admit_slow(self, t: Ticket, c: _Caller) -> Refusal | Waiter | None:
        now = self._clock()
        if self._draining:
            return self._refuse(t, c, "draining", now)
        # A request its client marks as a first try (attempt 0) is not a return, even when a
        # booking of the same client and path is open: that booking belongs to an earlier
        # request that was served outside its slot (a VM asking for its next token).
        if t.attempt != 0 and c.bookings and self.pacer.redeem(c.index, _key(t), now):
            t.solicited = True
            self.metrics.slots_redeemed.inc()
        elif t.is_retry:
            self._retries += 1
        mode = self.modes.state
        if not 0 <= t.priority < _N_PRIO:
            t.priority = _N_PRIO - 1
        decision, reason, expiry, by_deadline = self._decide(t, c, now, mode)
        if decision == _QUEUE and self._busy:
            # Our own loop is what is saturated: a waiter (its timer, its wake-up, a booked
            # answer if it expires) costs the CPU we lack, and answers read late would teach
            # the limiter a slow backend. Refuse at once, unbooked, with our own reason.
            decision, reason = _REFUSE, "busy"
        if self.modes.dry_run:
            if decision == _REFUSE:
                self.metrics.dry_run_decision[reason].inc()
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "dry-run refusal",
                        extra={"reason": reason, "caller": t.caller, "mode": mode.value},
                    )
            elif decision == _QUEUE:
                self.metrics.dry_run_deferrals.inc()
            self._take(t, c)
            return None
        if decision == _ADMIT:
            if t.origin_region is not None:
                self.metrics.spillover_served.inc()
            elif not t.is_retry and not t.solicited and self._fresh_tokens >= 1.0:
                self._fresh_tokens -= 1.0  # fresh arrivals use their share directly too
            self._take(t, c)
            return None
        if decision == _REFUSE:
            return self._refuse(t, c, reason, now)
        return self._enqueue(t, c, now, expiry, by_deadline, mode)

    def _decide(
        self, t: Ticket, c: _Caller, now: float, mode: Mode
    ) -> tuple[int, str, float, bool]:
        """The slow path's verdict: (decision, refusal reason, queue expiry, expiry is the
        client's deadline). Side effects limited to budget accounting."""
        if mode is Mode.SHIELD and not c.allowed:
            return _REFUSE, "shield", 0.0, False
        if c.cap == 0:
            return _REFUSE, "caller-cap", 0.0, False
        d = t.deadline
        remaining = math.inf
        if d is not None:
            remaining = d - now - self._margin
            if remaining < self._expected_latency:
                return _REFUSE, "deadline", 0.0, False
        free = self.in_flight < self._eff and c.in_flight < c.cap
        if t.origin_region is not None and self._spillover != "allow":
            if (
                self._spillover == "spare"
                and mode is Mode.NORMAL
                and c.in_flight < c.cap
                and self.in_flight < self._eff * self._spare
            ):
                return _ADMIT, "", 0.0, False
            return _REFUSE, "spillover", 0.0, False
        if self._budget_on:
            if t.is_retry and not t.solicited:
                if self.budgets.try_withdraw(c.index, now):
                    self.metrics.retry_admitted[c.label].inc()
                elif mode in (Mode.NORMAL, Mode.RECOVERY) and (
                    free or (not self._queued and self.config.queue.max_size > 0)
                ):
                    # Work-conserving: refused only when it would take a slot another
                    # request waits for. Over budget, it may take a free slot, or wait
                    # while nothing else does (in the last tier: whatever arrives next
                    # goes first), where waiting is possible at all.
                    if free:
                        self.metrics.retry_admitted[c.label].inc()
                        return _ADMIT, "", 0.0, False
                else:
                    self.metrics.retry_refused[c.label].inc()
                    return _REFUSE, "retry-budget", 0.0, False
            elif not t.is_retry:
                self.budgets.deposit(c.index)
        if free:
            return _ADMIT, "", 0.0, False
        short = mode is Mode.NORMAL or mode is Mode.SHIELD
        if short and c.in_flight >= c.cap:
            return _REFUSE, "caller-cap", 0.0, False
        full_reason = "outage" if mode is Mode.OUTAGE else "overload"
        wait = self.config.queue.normal_max_wait if short else self.config.queue.max_wait
        by_deadline = False
        if remaining - self._expected_latency < wait:
            wait = remaining - self._expected_latency
            by_deadline = True
        if d is None:
            # No deadline sent: the client still has one. Answer (with a paced Retry-After)
            # before its learnt patience runs out rather than let it time out on its own.
            implicit = t.arrived + self._patience - now - self._margin - self._expected_latency
            if implicit < wait:
                wait = implicit
        if wait <= 0:
            return _REFUSE, full_reason, 0.0, False
        # Refuse now if the wait would run out anyway (judged optimistically while the pace
        # is only guessed: the waiter is answered when its wait runs out if that was
        # wrong). A solicited return is always given its chance: it comes early in its lane.
        if (
            not t.solicited
            and mode is not Mode.OUTAGE
            and self._estimate_wait(c, self._level(t, c, take=False, now=now), now) > wait
        ):
            return _REFUSE, full_reason, 0.0, False

        return _QUEUE, full_reason, now + wait, by_deadline

    def _estimate_wait(self, c: _Caller, level: int, now: float) -> float:
        """Expected wait for a new waiter of `c` at `level`: its lane drains at its weighted
        share of the learned pace, behind the waiters in front of it (none under adaptive
        LIFO), after every level above."""
        pace = self._level_pace(level)
        lane = self._lanes[level].get(c.index)
        above = sum(self._queued_level[:level])
        if _IN_ORDER[level % _TIERS]:  # one queue across callers
            ahead = self._queued_level[level]
            if self._newest_first(level, now):
                # Under adaptive LIFO a newcomer goes behind the waiters still on time.
                cutoff = now - self._on_time_for
                lanes = self._lanes[level].values()
                ahead = sum(1 for other in lanes for _ in _read_since(other, cutoff))
            wait = (ahead + 1) / pace
            if c.cap < NO_CAP:
                latency = self._cap_latency()
                mine = 1 if ahead == 0 or lane is None else len(lane) + 1
                wait = max(wait, mine * latency / max(c.cap, 1e-3))
            return wait + above / pace
        # Under adaptive LIFO a newcomer is served first: it pushes the oldest waiters past
        # their expiry instead, and `_rejudge` answers those at the next tick.
        ahead = 0
        if lane is not None and lane.waiters:
            head = next(iter(lane.waiters.values()))
            lifo = lane.lifo and 0 < self._lifo_after < now - head.enqueued
            ahead = 0 if lifo else len(lane)
        weights = self._active_weight[level]
        if lane is None or not lane.active:
            weights += c.weight
        rate = pace * c.weight / max(weights, c.weight)
        if c.cap < NO_CAP:
            latency = self._cap_latency()
            rate = min(rate, c.cap / latency)
        return (ahead + 1) / max(rate, 1e-3) + above / pace

    def _cap_latency(self) -> float:
        """The latency a capped caller's slots turn over at (its cap / this = its rate)."""
        return max(self.limiter.latency or self._expected_latency, 1e-3)

    def _level_pace(self, level: int) -> float:
        """Requests/s the waiters of `level` can expect: the learned pace (unboosted, also
        while only guessed), less the fresh arrivals the first tier lets ahead of them."""
        pace = self._pace
        if level % _TIERS != _TIER_FRESH:
            # Solicited returns, once the pace is measured: the fresh arrivals expected (the
            # baseline), not the first tier's allowance (x1.2). That is a cap on fresh
            # traffic; counting all of it judged doomed the returns the backend was about to
            # serve, and every such bounce costs a client one of its few attempts. (While the
            # pace is a guess, e.g. the first seconds after an outage, the allowance stands:
            # held returns must not crowd the ramp that fresh traffic needs.)
            fresh = self._fresh_rate
            if level % _TIERS == _TIER_SOLICITED and self._pace_known:
                fresh = self.rates.baseline or 0.0
            pace = max(pace - fresh, pace * self.config.shedding.min_return_share)
        return max(pace, 1e-3)

    def _rejudge(self, now: float) -> None:
        """Answer now the waiters that, by the learned pace, cannot be served before their
        expiry: at once and with a paced Retry-After, rather than all together when their
        waits run out (a burst of answers that may come too late). O(queued), per tick,
        only while something waits. With the pace only guessed, the guess (unboosted) is
        used: a wave must not be held to its expiry and answered all at once."""
        doomed: list[Waiter] = []
        above = 0
        for level in range(_N_LEVELS):
            n_level = self._queued_level[level]
            if not n_level:
                continue
            pace = self._level_pace(level)
            if _IN_ORDER[level % _TIERS]:
                self._judge_in_order(level, pace, above / max(self._pace, 1e-3), now, doomed)
                above += n_level
                continue
            weights = max(self._active_weight[level], 1)
            for lane in self._lanes[level].values():
                if not lane.waiters:
                    continue
                c = lane.caller
                rate = pace * c.weight / weights
                if c.cap < NO_CAP:
                    latency = self._cap_latency()
                    rate = min(rate, c.cap / latency)
                rate = max(rate, 1e-3)
                base = above / max(self._pace, 1e-3)
                ws = list(lane.waiters.values())
                head = ws[0]
                if lane.lifo and 0 < self._lifo_after < now - head.enqueued:
                    ws.reverse()  # served newest first
                for k, w in enumerate(ws):
                    if now + base + (k + 1) / rate > w.expiry - self._stall:
                        doomed.append(w)
            above += n_level
        if not doomed:
            return
        for w in doomed:
            self._remove(w)
        for w in doomed:
            c = w.caller
            reason = "caller-cap" if c.in_flight >= c.cap else "overload"
            self._finish(w, REFUSED, self._refuse(w.ticket, c, reason, now), now, spread=True)

    def _judge_in_order(
        self, level: int, pace: float, base: float, now: float, doomed: list[Waiter]
    ) -> None:
        """`_rejudge` for a level served as one queue across callers: a waiter's wait is its
        place in that order at the level's pace (and its caller's cap), counting only those
        in front that will not be answered now."""
        waiters = self._serve_order(level, now)
        latency = self._cap_latency()
        placed = 0
        per_caller: dict[int, int] = {}
        for w in waiters:
            c = w.caller
            wait = (placed + 1) / pace
            if c.cap < NO_CAP:
                mine = per_caller.get(c.index, 0) + 1
                wait = max(wait, mine * latency / max(c.cap, 1e-3))
            if now + base + wait > w.expiry - self._stall:
                doomed.append(w)
                continue
            placed += 1
            if c.cap < NO_CAP:
                per_caller[c.index] = per_caller.get(c.index, 0) + 1

    def _take(self, t: Ticket, c: _Caller) -> None:
        self.in_flight += 1
        c.in_flight += 1
        t.gate_state = c

    def _status_for(self, reason: str) -> int:
        if reason == "overload":
            return self._overload_status
        if reason in ("caller-cap", "retry-budget"):
            return 429
        if reason == "deadline":
            return 504
        return 503

    def _refuse(self, t: Ticket, c: _Caller, reason: str, now: float) -> Refusal:
        sh = self.config.shedding
        if reason in _UNBOOKED:
            ms = math.ceil(sh.retry_after_unbooked * 1000)
            if reason == "spillover":
                self.metrics.spillover_refused.inc()
        elif reason == "caller-cap" and c.cap == 0:
            ms = math.ceil(sh.retry_after_max * 1000)  # it will be refused again: come late
        else:
            not_before = self.modes.shield_until if reason == "shield" else 0.0
            if self.modes.state is Mode.OUTAGE:
                # No room is known to come: not before the outage is expected to end, nor
                # sooner than an answer that books nothing.
                left = max(self.modes.expected_outage_left(now), sh.retry_after_unbooked)
                not_before = max(not_before, now + left)
            baseline = self.rates.baseline or 0.0
            pace = self._book_pace
            if t.solicited:
                # Back in its slot and still not served: the optimism that booked it did not
                # hold. Its next slot is booked at the plain estimate, so a request bounces
                # once, not until its client runs out of retries.
                pace = min(pace, self._pace * self.config.shedding.pace_headroom)
                if not self._pace_known and self.modes.state is not Mode.OUTAGE:
                    # The pace is still a guess, and the guess just proved optimistic: no
                    # boost at all, or the rebooked slot is early again (after an outage the
                    # whole held backlog bounces at once, and clients run out of attempts).
                    pace = min(pace, self._pace)
            # Work in front of the return: what is queued, but no more than can be served
            # within a client's patience (the rest of a wave being read will be answered too,
            # and must not push every return back by the time it would take to serve it).
            ahead = min(self._queued, int(self._pace * self._patience))
            ms = self.pacer.book(c.index, now, pace, baseline, ahead, not_before, _key(t))
            self.metrics.slots_booked.inc()
            self._mode_backlog += 1
            if reason == "overload" or reason == "outage":
                self._overloaded += 1
                if (
                    self.modes.state is Mode.NORMAL
                    and self._queued + self._overloaded == self.config.recovery.enter_queue_depth
                ):
                    # A wave refused by NORMAL's short queue is a reopening backlog just as
                    # one that queues: judge it now, not at the next tick.
                    self._evaluate(now)
                    self._pump(now)
            if reason in _HELD and self._hold_max > 0:
                return self._held(t, reason, ms, now)
        return Refusal(reason, self._status_for(reason), ms)

    def _held(self, t: Ticket, reason: str, ms: int, now: float) -> Refusal:
        """A paced answer, sent after a hold (HAProxy's tarpit). A client that retries
        without waiting (the naive profile: 50 ms after an error, whatever Retry-After says)
        comes back once per hold instead of once per round trip, and its storm no longer
        takes our loop from the traffic we serve: in naive reopen x1 (seen with a temporary
        trace and a CPU monitor), ~6,000 refusals a second left the backend's answers unread
        until it idled with our slots all taken, and fresh requests waited 0.3-0.7 s
        (`hold_max: 0` in the scenario's config brings it back). A client that honours
        Retry-After loses
        nothing: it counts from the end of the hold, so it returns at the booked time.

        The hold is 1/4 to 3/4 of the time the client has left (before its deadline, less
        the margin and our last stall), at most `shedding.hold_max` and the booked
        return, spread evenly: a wave read together and held alike would be answered, and
        come back, together (bursts of 2,000 answers and retries every half second at
        naive reopen x2, and answers sent late meanwhile)."""
        left = t.deadline if t.deadline is not None else t.arrived + self._patience
        room = left - now - self._margin - self._stall
        longest = min(self._hold_max, ms / 1000.0, room * _HOLD_SHARE)
        status = self._status_for(reason)
        if longest < _HOLD_MIN:
            return Refusal(reason, status, ms)
        self._hold_phase = (self._hold_phase + _GOLDEN) % 1.0  # evenly spread, no RNG
        hold = longest * (1.0 - _HOLD_SPREAD * self._hold_phase)
        return Refusal(reason, status, max(1, ms - int(hold * 1000.0)), hold)

    def _refusal_for_cancelled(self) -> Refusal:
        return Refusal("overload", self._overload_status, 0)

    # --- queues ----------------------------------------------------------------------------
    def _level(self, t: Ticket, c: _Caller, take: bool, now: float) -> int:
        """The queue level of a ticket: its priority class, then its tier. A fresh arrival
        gets the first tier while fresh arrivals stay within the baseline rate (`take`
        spends the token)."""
        if t.solicited:
            tier = _TIER_SOLICITED
        elif t.is_retry:
            tier = _TIER_RETRY
        elif self._fresh_tokens >= 1.0 or self._refill(now) >= 1.0:
            tier = _TIER_FRESH
            if take:
                self._fresh_tokens -= 1.0
        else:
            tier = _TIER_REST
        return t.priority * _TIERS + tier

    def _refill(self, now: float) -> float:
        """Accrue the first tier's allowance up to `now` (between ticks too: a whole tick's
        worth arriving at once goes to whatever is read first); returns the tokens."""
        dt = now - self._tokens_at
        if dt > 0:
            self._tokens_at = now
            self._fresh_tokens = min(self._fresh_burst, self._fresh_tokens + self._fresh_rate * dt)
        return self._fresh_tokens

    def _lane(self, c: _Caller, level: int) -> _Lane:
        """`c`'s lane at `level`, created and put in the round-robin if needed."""
        lanes = self._lanes[level]
        lane = lanes.get(c.index)
        if lane is None or lane.caller is not c:
            lane = _Lane(c, level)
            lanes[c.index] = lane
        if not lane.active:
            lane.active = True
            lane.deficit = 0
            self._active[level].append(lane)
            self._active_weight[level] += c.weight
        return lane

    def _enqueue(
        self, t: Ticket, c: _Caller, now: float, expiry: float, by_deadline: bool, mode: Mode
    ) -> Refusal | Waiter:
        level = self._level(t, c, take=False, now=now)
        if self._queued >= self.config.queue.max_size and not self._make_room(c, level, now):
            return self._refuse(t, c, "outage" if mode is Mode.OUTAGE else "overload", now)
        level = self._level(t, c, take=True, now=now)
        lane = self._lane(c, level)
        self._seq += 1
        w = Waiter(self, t, lane, self._seq, now, expiry, by_deadline)
        lane.waiters[w.key] = w
        c.queued += 1
        self._queued += 1
        self._queued_level[level] += 1
        self._mode_backlog += 1
        heapq.heappush(self._heap, (expiry, w.key, w))
        if len(self._heap) > 2 * self._queued + 1024:
            self._compact_heap()
        if mode is Mode.NORMAL and self._queued == self.config.recovery.enter_queue_depth:
            # A backlog reopening upstream arrives faster than ticks: judge it now, so the
            # rest of the wave is held for RECOVERY instead of shed by NORMAL's short queue.
            self._evaluate(now)
            self._pump(now)  # the new limit in force may have room (this waiter included)
        return w

    def _make_room(self, c: _Caller, level: int, now: float) -> bool:
        """Queue full: push out the newest waiter of a lower level (solicited returns are
        never pushed out), else of the longest lane at this level if it is longer than this
        caller's would be (fair: one caller's burst cannot lock the others out). O(lanes),
        on the overloaded path only."""
        mine = self._lanes[level].get(c.index)
        my_len = len(mine) if mine is not None else 0
        longest: _Lane | None = None
        for lanes in reversed(self._lanes[level:]):
            for lane in lanes.values():
                if lane.waiters and lane.lifo and (longest is None or len(lane) > len(longest)):
                    longest = lane
            if longest is not None and longest.level > level:
                break  # a lower level gives way first
        if longest is None or (longest.level == level and len(longest) <= my_len + 1):
            return False
        w = longest.pop_newest()
        self._unqueue(w)
        self._finish(w, REFUSED, self._refuse(w.ticket, w.caller, "overload", now), now)
        return True

    def _unqueue(self, w: Waiter) -> None:
        """Bookkeeping for a waiter already taken out of its lane's dicts."""
        c = w.caller
        c.queued -= 1
        self._queued -= 1
        self._queued_level[w.lane.level] -= 1
        if not self._queued:
            self._heap.clear()  # only stale (granted, refused, cancelled) entries are left

    def _remove(self, w: Waiter) -> None:
        """Take a waiting entry out of its lane in O(1)."""
        lane = w.lane
        del lane.waiters[w.key]
        self._unqueue(w)

    def _finish(
        self, w: Waiter, state: int, result: Refusal | None, now: float, spread: bool = False
    ) -> None:
        """Resolve a waiter; `spread` (a refusal among many, far from its expiry) wakes it
        through `_Wakeups`, a chunk per loop iteration."""
        self.metrics.queue_wait.observe(max(0.0, now - w.enqueued))
        w._resolve(state, result, spread)

    def _pick(self, now: float) -> Waiter | None:
        """Highest priority first; within a level, one queue across callers (`_IN_ORDER`) or
        deficit round-robin by weight, skipping callers at their cap. Round-robin is O(1)
        amortised, O(active lanes) when every waiter is capped; one queue is O(active lanes)."""
        for p in range(_N_LEVELS):
            if not self._queued_level[p]:
                continue
            active = self._active[p]
            if _IN_ORDER[p % _TIERS]:
                w = self._pick_in_order(active, p, now)
                if w is None:
                    continue
                return w
            skipped = 0
            while active and skipped < len(active):
                lane = active[0]
                if not lane:
                    self._deactivate(active, lane, p)
                    continue
                c = lane.caller
                if c.in_flight >= c.cap:
                    active.rotate(-1)
                    skipped += 1
                    continue
                if lane.deficit <= 0:
                    lane.deficit += c.weight
                w = lane.pop(self._lifo_after, now)
                lane.deficit -= 1
                if not lane:
                    self._deactivate(active, lane, p)
                elif lane.deficit <= 0:
                    active.rotate(-1)
                self._unqueue(w)
                return w
        return None

    def _newest_first(self, level: int, now: float) -> bool:
        """Adaptive LIFO for a level served as one queue: on once its oldest waiter has
        waited `lifo_after` (never for solicited returns: their order is the schedule)."""
        if level % _TIERS == _TIER_SOLICITED or self._lifo_after <= 0:
            return False
        oldest = min(
            (next(iter(lane.waiters.values())) for lane in self._active[level] if lane),
            key=_by_key,
            default=None,
        )
        return oldest is not None and now - oldest.enqueued > self._lifo_after

    def _serve_order(self, level: int, now: float) -> list[Waiter]:
        """The waiters of a level served as one queue, in the order `_pick_in_order` takes
        them (callers' caps aside): oldest first; under adaptive LIFO, those still on time
        oldest first, then the late ones newest first. O(waiters log waiters), per tick."""
        waiters = sorted(
            (w for lane in self._lanes[level].values() for w in lane.waiters.values()),
            key=_by_key,
        )
        if not self._newest_first(level, now):
            return waiters
        cutoff = now - self._on_time_for
        late = [w for w in waiters if w.enqueued < cutoff]
        late.reverse()
        return [w for w in waiters if w.enqueued >= cutoff] + late

    def _pick_in_order(self, active: deque[_Lane], p: int, now: float) -> Waiter | None:
        """The next waiter of a level served as one queue across callers (skipping callers
        at their cap): the oldest; under adaptive LIFO the oldest still on time (read
        within `_on_time_for`), else the newest. O(active lanes + waiters on time)."""
        oldest: _Lane | None = None
        newest: _Lane | None = None
        lanes: list[_Lane] = []
        for lane in list(active):
            if not lane:
                self._deactivate(active, lane, p)
                continue
            c = lane.caller
            if c.in_flight >= c.cap:
                continue
            lanes.append(lane)
            if oldest is None or next(iter(lane.waiters)) < next(iter(oldest.waiters)):
                oldest = lane
            if newest is None or next(reversed(lane.waiters)) > next(reversed(newest.waiters)):
                newest = lane
        if oldest is None or newest is None:
            return None
        head = next(iter(oldest.waiters.values()))
        if oldest.lifo and 0 < self._lifo_after < now - head.enqueued:
            # A request read late (our loop was busy reading a wave) is not passed over
            # by every newer one: while it is on time it keeps its place.
            cutoff = now - self._on_time_for
            first: Waiter | None = None
            for lane in lanes:
                for w in _read_since(lane, cutoff):  # newest first: the last is its oldest
                    if first is None or w.key < first.key:
                        first = w
            if first is not None:
                del first.lane.waiters[first.key]
                w = first
            else:
                w = newest.waiters.popitem(last=True)[1]
        else:
            w = oldest.waiters.popitem(last=False)[1]
        self._unqueue(w)
        return w

    def _deactivate(self, active: deque[_Lane], lane: _Lane, p: int) -> None:
        """Take an emptied lane out of its level's round (O(1) at the head, as in `_pick`)."""
        if active[0] is lane:
            active.popleft()
        else:
            active.remove(lane)
        lane.active = False
        lane.deficit = 0
        self._active_weight[p] -= lane.caller.weight

    def _pump(self, now: float) -> int:
        """Grant waiters while the limit in force has room; returns how many."""
        granted = 0
        while self._queued and self.in_flight < self._eff:
            w = self._pick(now)
            if w is None:
                break
            self._take(w.ticket, w.caller)
            self._finish(w, ADMITTED, None, now)
            granted += 1
        if granted and self.modes.state is Mode.RECOVERY:
            self.metrics.batch_requests.inc(granted)
            self._released_this_tick += granted
        return granted

    def _expire(self, now: float) -> None:
        heap = self._heap
        expired = []
        # Expiries are checked once per tick: answer what would run out before the next
        # one now, rather than a tick late (after the client's own timeout).
        # (plus our last stall: a waiter read late is older to its client than to us.)
        horizon = now + self.config.recovery.batch_interval + self._stall
        while heap and heap[0][0] <= horizon:
            _, _, w = heapq.heappop(heap)
            if w.state == WAITING:
                self._remove(w)
                expired.append(w)
        # Answered only once all are out of the queue, so each one's return is booked
        # behind the others' (not behind a queue they are no longer in).
        for w in expired:
            c = w.caller
            if w.by_deadline:
                reason = "deadline"
            elif c.in_flight >= c.cap:
                reason = "caller-cap"
            elif self.modes.state is Mode.OUTAGE:
                reason = "outage"
            else:
                reason = "overload"
            self._finish(w, REFUSED, self._refuse(w.ticket, c, reason, now), now)

    def _compact_heap(self) -> None:
        self._heap = [e for e in self._heap if e[2].state == WAITING]
        heapq.heapify(self._heap)

    def _abandon(self, w: Waiter) -> None:
        """The client went away: drop its waiter, or hand back a slot just granted."""
        if w.state == WAITING:
            self._remove(w)
            w.state = CANCELLED
            now = self._clock()
            self.metrics.queue_wait.observe(max(0.0, now - w.enqueued))
            if w.ticket.deadline is None:
                self.patience.observe(now - w.ticket.arrived)
        elif w.state == ADMITTED:
            w.state = CANCELLED
            self.release(w.ticket, _CANCELLED_OUTCOME)

    def _refuse_all(self, reason: str, now: float, keep: Callable[[_Caller], bool]) -> int:
        """Answer every waiter whose caller `keep` rejects with `reason` (drain, SHIELD)."""
        victims = [
            w
            for lanes in self._lanes
            for lane in lanes.values()
            if not keep(lane.caller)
            for w in lane.waiters.values()
        ]
        for w in victims:
            self._remove(w)
        for w in victims:
            self._finish(
                w, REFUSED, self._refuse(w.ticket, w.caller, reason, now), now, spread=True
            )
        return len(victims)

    # --- the limit in force ------------------------------------------------------------------
    def _set_eff(self, now: float, batch: bool) -> None:
        limit = self.limiter.limit
        mode = self.modes.state
        if mode is Mode.RECOVERY:
            ceiling = min(limit, self.in_flight + self.config.recovery.batch_size)
            self._eff = ceiling if batch else min(self._eff, limit)
        elif mode is Mode.OUTAGE:
            self._eff = min(limit, self.config.modes.outage_trickle)
        else:
            self._eff = limit
        self._fast = mode is Mode.NORMAL and not self._draining and not self.modes.dry_run

    # --- the ticker --------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One round of background work (the ticker calls it every `batch_interval`):
        fold counters into the signals, expire waiters, close a limiter window, age budgets
        and slots, evaluate the mode, release a batch, refresh gauges."""
        ok, lat_sum = self._n_ok, self._lat_sum
        dt = now - self._last_tick
        self._last_tick = now
        lag = max(0.0, dt - self.config.recovery.batch_interval)
        # Saturated, not stalled once (a collection, a wave being read): two late ticks
        # in a row.
        self._busy = 0 < self._busy_lag <= min(lag, self._lag)
        self._lag = lag
        self.limiter.note_lag(lag)
        if lag >= self._stall or now - self._stall_at > self._patience:
            self._stall, self._stall_at = lag, now
        self._refill(now)
        if dt > 0:
            self._throughput += _THROUGHPUT_ALPHA * (ok / dt - self._throughput)
        push, timeouts, broken = self._n_push, self._n_timeout, self._n_broken
        self._n_ok = self._n_push = self._n_timeout = self._n_broken = 0
        self._lat_sum = 0.0
        self.health.record(now, ok, push, timeouts, broken)
        self.limiter.add(ok, lat_sum, push + timeouts, broken, self._n_clean, self._clean_sum)
        self._n_clean = 0
        self._clean_sum = 0.0
        self.rates.record(now, self._arrivals, self._retries)
        self._arrivals = self._retries = 0
        waiting = bool(self._overloaded or self._queued)
        if self._overloaded or (self._queued and self.in_flight >= self._eff):
            self._saturated_ticks += 1
            self._measure_capacity(now, ok)
            lim = self.limiter
            if (
                self._saturated_ticks >= 2
                and self._starting(now)
                and (lim.floor.value is None or lim.knee_at is not None)
            ):
                # Full, and the backend is slow to answer or queues at this concurrency:
                # loaded. Full while it answers at its unloaded latency only means our
                # starting limit is below the traffic: the limiter grows, no RECOVERY.
                self._loaded_at_start = True  # remembered: dwell may not let us act yet
        else:
            self._saturated_ticks = 0
            self._run_start = None
            if self._capacity is not None and now - self._capacity_at > _CAPACITY_TTL:
                self._capacity = None  # too old to trust: the backend may have changed
                self._n_samples = 0
                self._samples.clear()
        self._overloaded = 0

        self._expire(now)
        mode = self.modes.state
        if self.limiter.tick(now, self.in_flight, mode in (Mode.NORMAL, Mode.RECOVERY), waiting):
            self.metrics.limit.set(self.limiter.limit)
        self._refresh_estimates(now)
        if self._queued and mode is not Mode.OUTAGE:
            self._rejudge(now)
        self._measuring_since = self.limiter.measuring_since
        self.budgets.roll(now)
        if now - self._last_prune >= 1.0:
            self._last_prune = now
            self.pacer.prune(now)
            self._refresh_caps()
        # A start under load (RECOVERY from the first seconds) never saw NORMAL: it seeds
        # the baseline from traffic served with nothing held or refused for capacity, or
        # fresh traffic would have no first tier when a wave comes. Only seeds: later in a
        # RECOVERY, what arrives includes booked returns, which are not a baseline.
        seed = self.rates.baseline is None and mode is Mode.RECOVERY and not waiting
        self.rates.update_baseline(now, learning=mode is Mode.NORMAL or seed)

        transition = self.modes.evaluate(self._snapshot(now), now)
        if transition is not None:
            self._on_transition(transition, now)

        self._released_this_tick = 0
        self._set_eff(now, batch=True)
        self._pump(now)
        if self._released_this_tick:
            self.metrics.batches.inc()
        self._update_gauges(now)

    def _measure_capacity(self, now: float, ok: int) -> None:
        """While waiters wait for a full limiter, goodput is what the backend can do: over
        a run of such ticks it measures its capacity (what pacing and wait estimates need).
        Not while something else holds concurrency below the knee on purpose (slow start,
        re-measuring, a batch ramp, OUTAGE's trickle, SHIELD's allow-list)."""
        lim = self.limiter
        mode = self.modes.state
        if (
            lim.slow_start
            or lim.probing
            or mode is Mode.OUTAGE
            or mode is Mode.SHIELD
            or self._eff < lim.limit  # a batch ramp, not the limiter, is what binds
        ):
            self._run_start = None
            return
        if self._run_start is None:
            self._run_start = now  # goodput counts from the next tick on
            self._run_ok = 0.0
            return
        self._run_ok += ok
        span = now - self._run_start
        if span >= _RUN_MIN - 1e-9 and self._run_ok <= 0:
            self._run_start = now  # nothing answered: a stall, not a pace (health's business)
        elif span >= _RUN_MIN - 1e-9:
            # A sample per run of _RUN_MIN. Whatever holds the limit off the knee (above it
            # the backend thrashes, below it workers idle) only lowers goodput, so the best
            # recent sample is the best estimate of the capacity.
            samples = self._samples
            samples.append((now, self._run_ok / span))
            while samples and now - samples[0][0] > _SAMPLES_KEPT:
                samples.popleft()
            self._capacity = max(v for _, v in samples)
            self._n_samples += 1
            self._capacity_at = now
            self._run_start = now
            self._run_ok = 0.0

    def _snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            health=self.health.view(now),
            queue_depth=self._queued + (self._overloaded if self.modes.state is Mode.NORMAL else 0),
            arrival_rate=self.rates.rate(now),
            surge_ratio=self.rates.surge_ratio(now),
            retry_share=self.rates.retry_share(now),
            backlog=self._mode_backlog > 0,
            saturated=self._saturated_ticks >= 2 or self._loaded_at_start,
            loaded=self._loaded_at_start,
            limit_growing=self.limiter.growing(),
            returns_ahead=self.pacer.next_free(now),
        )

    def _starting(self, now: float) -> bool:
        return now - self.started_at < self.config.modes.startup_window

    def _refresh_caps(self) -> None:
        for c, cap in zip(self._callers, self._caps.caps(self._names), strict=True):
            c.cap = NO_CAP if cap is None else cap

    def on_probe(self, ok: bool, now: float) -> None:
        """Record an active health probe's result and re-evaluate the mode at once."""
        self.health.probe(ok)
        self._last_probe_ok = ok
        self._evaluate(now)
        self._pump(now)

    def _evaluate(self, now: float) -> None:
        transition = self.modes.evaluate(self._snapshot(now), now)
        if transition is not None:
            self._on_transition(transition, now)

    def _on_transition(self, tr: Transition, now: float) -> None:
        m = self.metrics
        self._transition_children[(tr.from_mode, tr.to_mode, tr.reason)].inc()
        m.set_mode(tr.to_mode.value)
        modes_log.info(
            "mode %s -> %s (%s)",
            tr.from_mode.value,
            tr.to_mode.value,
            tr.reason,
            extra={
                "from_mode": tr.from_mode.value,
                "to_mode": tr.to_mode.value,
                "reason": tr.reason,
                "event": tr.event.value,
                "detail": tr.detail,
                "queue": self._queued,
                "limit": self.limiter.limit,
                "in_flight": self.in_flight,
                "dry_run": self.modes.dry_run,
            },
        )
        self._mode_backlog = 0
        self._loaded_at_start = False
        new, old = tr.to_mode, tr.from_mode
        if new is Mode.OUTAGE:
            # Leaving OUTAGE needs fresh evidence: a good probe after this instant.
            self.health.reset_window()
            self.health.reset_probes()
        if old is Mode.OUTAGE:
            self.health.reset_window()
        if new is Mode.RECOVERY:
            cold = old in (Mode.OUTAGE, Mode.SHIELD) or tr.event is Event.LOADED_AT_START
            self.limiter.enter_slow_start(now, from_floor=cold)
            self.metrics.limit.set(self.limiter.limit)
        if new is Mode.NORMAL and old is not Mode.NORMAL:
            rec = self.config.recovery
            if self.rates.surge_ratio(now) >= rec.enter_arrival_ratio:
                self.rates.rebase(now)  # judged calm at this rate: it is the new normal
        for c in self._callers:
            c.allowed = False
        if new is Mode.SHIELD:
            allow = self.modes.shield_allow
            for c in self._callers:
                c.allowed = c.name in allow
            self._refuse_all("shield", now, keep=lambda c: c.allowed)
        self._set_eff(now, batch=True)
        self._next_probe = min(self._next_probe, now + self.config.upstream.probe_interval)

    def _update_gauges(self, now: float) -> None:
        m = self.metrics
        m.limit.set(self.limiter.limit)
        m.limit_floor.set(self.config.limiter.floor)
        m.shield_remaining.set(self.modes.shield_remaining(now))
        for gauge, n in zip(self._prio_gauges, self._queued_by_priority(), strict=True):
            gauge.set(n)
        floor = self.limiter.floor.value
        m.latency_floor.set(floor if floor is not None else 0.0)
        m.pace.set(self._pace)
        m.loop_lag.set(self._lag)
        m.arrival_rate.set(self.rates.rate(now))
        m.arrival_baseline.set(self.rates.baseline or 0.0)
        m.retry_share.set(self.rates.retry_share(now))
        m.slots_live.set(self.pacer.total)
        other_flight = other_queue = 0
        for c in self._callers:
            if c.label == "other":
                other_flight += c.in_flight
                other_queue += c.queued
            else:
                child = m.caller_in_flight_children.get(c.label)
                if child is not None:
                    child.set(c.in_flight)
                qchild = m.caller_queue_children.get(c.label)
                if qchild is not None:
                    qchild.set(c.queued)
        m.caller_in_flight_children["other"].set(other_flight)
        m.caller_queue_children["other"].set(other_queue)
        if self._budget_on:
            other_budget = math.inf
            for c in self._callers:
                remaining = self.budgets.remaining(c.index, now)
                if c.label == "other":
                    other_budget = min(other_budget, remaining)
                else:
                    child = m.budget_children.get(c.label)
                    if child is not None:
                        child.set(remaining)
            if other_budget != math.inf:
                m.budget_children["other"].set(other_budget)
            m.budget_global.set(self.budgets.remaining_global(now))

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, probe: Probe) -> None:
        """Start the ticker (batches, mode evaluation, probes) in the running loop."""
        self._probe = probe
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sluice-gate-ticker")

    async def _run(self) -> None:
        while True:
            await self._sleep_expiring(self.config.recovery.batch_interval)
            now = self._clock()
            try:
                self.tick(now)
            except Exception:  # the ticker must survive a bug in one round
                log.exception("gate tick failed")
            if (
                self._probe is not None
                and self._probe_task is None
                and now + _TIMER_SLACK >= self._next_probe
            ):
                self._probe_task = asyncio.create_task(self._run_probe(self._probe, now))

    async def _sleep_expiring(self, interval: float) -> None:
        """Sleep one tick's `interval`, answering on the way the waiters whose wait runs out
        before it ends (a refusal frees no slot, so nothing else is due before the tick)."""
        left = interval
        while left > 0:
            step = left
            if self._heap:
                step = min(left, max(self._heap[0][0] - self._clock(), _EXPIRY_STEP))
            await asyncio.sleep(step)
            left -= step
            if left > 0 and self._heap and self._heap[0][0] <= self._clock():
                try:
                    self._expire(self._clock())
                except Exception:  # as for a tick: the ticker must survive
                    log.exception("gate expiry failed")

    async def _run_probe(self, probe: Probe, started: float) -> None:
        up = self.config.upstream
        try:
            try:
                async with asyncio.timeout(2 * up.probe_timeout + 1.0):
                    ok = await probe()
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe that raises is a failed probe
                ok = False
            now = self._clock()
            self.on_probe(ok, now)
            slow = self.modes.state is Mode.NORMAL and ok
            # From the probe's start, not its answer: ticks come every batch_interval, and a
            # period counted from the answer missed the tick after it (half the probes).
            self._next_probe = started + (up.probe_interval_normal if slow else up.probe_interval)
        finally:
            self._probe_task = None

    async def drain(self) -> None:
        """Refuse new work and answer every waiter with `draining`."""
        self._draining = True
        self._fast = False
        self._refuse_all("draining", self._clock(), keep=lambda c: False)

    async def stop(self) -> None:
        """Stop the ticker and any probe in flight."""
        for task in (self._task, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        self._probe_task = None

    # --- operators -----------------------------------------------------------------------------
    def _set_dry_run(self, on: bool, now: float) -> None:
        self.modes.dry_run = on
        self.metrics.dry_run.set(1 if on else 0)
        self._set_eff(now, batch=True)
        if on:  # dry run admits everything, including what was waiting
            waiting = [
                w for lanes in self._lanes for lane in lanes.values() for w in lane.waiters.values()
            ]
            for w in waiting:
                self._remove(w)
                self._take(w.ticket, w.caller)
                self._finish(w, ADMITTED, None, now)
        self._pump(now)

    def command(self, action: str, **params: Any) -> dict[str, Any]:
        """Operator command: `recovery`, `shield` (ttl, allow), `normal`, `dry-run` (on)."""
        now = self._clock()
        transition: Transition | None = None
        if action == "recovery":
            _no_params(action, params)
            if self.modes.state is not Mode.RECOVERY:
                transition = self.modes.apply(
                    Event.OPERATOR_RECOVERY, now, REASON_OPERATOR, "operator command"
                )
        elif action == "shield":
            ttl, allow = self._shield_params(params)
            detail = f"ttl {ttl:g}s, allow {sorted(allow)}"
            transition = self.modes.apply(
                Event.OPERATOR_SHIELD, now, REASON_OPERATOR, detail, ttl, allow
            )
        elif action == "normal":
            _no_params(action, params)
            if self.modes.state is Mode.SHIELD:
                raise ValueError(
                    "SHIELD exits only to RECOVERY: send 'recovery' first, then 'normal'"
                )
            if self.modes.state is not Mode.NORMAL:
                try:
                    transition = self.modes.apply(
                        Event.OPERATOR_NORMAL, now, REASON_OPERATOR, "operator command"
                    )
                except IllegalTransition as exc:  # pragma: no cover - table guards it
                    raise ValueError(str(exc)) from None
        elif action == "dry-run":
            extra = set(params) - {"on"}
            if extra:
                raise ValueError(
                    f"dry-run takes only 'on' (unexpected: {', '.join(sorted(extra))})"
                )
            on = params.get("on")
            if not isinstance(on, bool):
                raise ValueError("dry-run needs 'on': true or false")
            self._set_dry_run(on, now)
        else:
            raise ValueError(
                f"unknown mode command {action!r}: use recovery, shield, normal or dry-run"
            )
        if transition is not None:
            self._on_transition(transition, now)
            self._pump(now)
        return {
            "mode": self.modes.state.value,
            "changed": transition is not None,
            "transition": transition.to_dict(now) if transition is not None else None,
            "dry_run": self.modes.dry_run,
        }

    def _shield_params(self, params: dict[str, Any]) -> tuple[float, frozenset[str]]:
        extra = set(params) - {"ttl", "allow"}
        if extra:
            raise ValueError(
                f"shield takes 'ttl' and 'allow' (unexpected: {', '.join(sorted(extra))})"
            )
        m = self.config.modes
        raw_ttl = params.get("ttl")
        if raw_ttl is None:
            ttl = m.shield_default_ttl
        elif isinstance(raw_ttl, bool):
            raise ValueError("shield 'ttl' must be seconds or a duration like '10m'")
        elif isinstance(raw_ttl, int | float):
            ttl = float(raw_ttl)
        elif isinstance(raw_ttl, str):
            ttl = parse_duration(raw_ttl)
        else:
            raise ValueError("shield 'ttl' must be seconds or a duration like '10m'")
        if not math.isfinite(ttl) or ttl <= 0 or ttl > m.shield_max_ttl:
            raise ValueError(f"shield 'ttl' must be > 0 and <= {m.shield_max_ttl:g}s")
        raw_allow = params.get("allow", [])
        if not isinstance(raw_allow, list) or not all(isinstance(a, str) for a in raw_allow):
            raise ValueError("shield 'allow' must be a list of caller names")
        known = {c.name for c in self.config.callers.known}
        unknown = sorted(set(raw_allow) - known)
        if unknown:
            raise ValueError(
                f"shield 'allow' names unknown callers: {', '.join(unknown)} "
                "(only callers.known can be allow-listed)"
            )
        return ttl, frozenset(raw_allow)

    # --- status ----------------------------------------------------------------------------------
    def upstream_refusal(self, ticket: Ticket, status: int) -> Refusal | None:
        """In OUTAGE (not dry run), a 5xx met by a canary or a request admitted before the
        switch is answered `503 outage` instead: not before the outage is expected to end,
        within the Retry-After bounds, no slot booked. None otherwise (relay the answer)."""
        if status < 500 or self.modes.state is not Mode.OUTAGE or self.modes.dry_run:
            return None
        sh = self.config.shedding
        left = self.modes.expected_outage_left(self._clock())
        ms = math.ceil(min(max(sh.retry_after_unbooked, left), sh.retry_after_max) * 1000)
        return Refusal(Reason.OUTAGE, 503, ms)

    def calm(self) -> bool:
        """NORMAL and not draining: no surge in hand."""
        return self.modes.state is Mode.NORMAL and not self._draining

    def status(self) -> dict[str, Any]:
        """JSON-able state for the admin /status endpoint."""
        now = self._clock()
        lim = self.limiter
        floor = lim.floor.value
        by_caller = {c.name: c.queued for c in self._callers if c.queued}
        slots = {self._callers[i].name: n for i, n in self.pacer.by_caller().items()}
        doc: dict[str, Any] = {
            "mode": self.modes.state.value,
            "mode_reason": self.modes.reason,
            "mode_for_s": round(now - self.modes.since, 3),
            "protection": self.config.modes.protection,
            "dry_run": self.modes.dry_run,
            "draining": self._draining,
            "limit": lim.limit,
            "limit_in_force": min(self._eff, lim.limit),
            "limit_bounds": [self.config.limiter.floor, self.config.limiter.ceiling],
            "limit_last_change": lim.last_change,
            "limit_algorithm": self.config.limiter.algorithm,
            "loop_lag_ms": round(self._lag * 1000, 1),
            "loop_stall_ms": round(self._stall * 1000, 1),
            "busy": self._busy,
            "slow_start": lim.slow_start,
            "latency_floor_ms": round(floor * 1000, 2) if floor is not None else None,
            "pace_rps": round(self._pace, 1),
            "pace_measured": self._pace_known,
            "client_patience_s": round(self._patience, 3),
            "in_flight": self.in_flight,
            "queue": {
                "total": self._queued,
                "max": self.config.queue.max_size,
                "by_priority": dict(zip(PRIORITY_CLASSES, self._queued_by_priority(), strict=True)),
                "by_tier": {
                    name: sum(self._queued_level[tier::_TIERS])
                    for tier, name in enumerate(("fresh", "solicited", "rest", "retry"))
                },
                "by_caller": by_caller,
            },
            "slots": {
                "booked": self.pacer.total,
                "by_caller": slots,
                "next_free_in_ms": round(self.pacer.next_free(now) * 1000),
                "total_booked": self.pacer.booked,
                "redeemed": self.pacer.redeemed,
                "expired": self.pacer.expired,
            },
            "signals": {
                "arrival_rate": round(self.rates.rate(now), 2),
                "arrival_baseline": (
                    round(self.rates.baseline, 2) if self.rates.baseline is not None else None
                ),
                "retry_share": round(self.rates.retry_share(now), 4),
                "upstream": _health_doc(self.health, now),
            },
            "transitions": [t.to_dict(now) for t in reversed(self.modes.history)],
        }
        if self._budget_on:
            doc["retry_budget"] = {
                "global": round(self.budgets.remaining_global(now), 2),
                **{
                    c.name: round(self.budgets.remaining(c.index, now), 2)
                    for c in self._callers[: self._n_known]
                },
            }
        if self.modes.state is Mode.SHIELD:
            doc["shield"] = {
                "remaining_s": round(self.modes.shield_remaining(now), 3),
                "allow": sorted(self.modes.shield_allow),
            }
        return doc


def _health_doc(health: UpstreamHealth, now: float) -> dict[str, Any]:
    h = health.view(now)
    return {
        "ok": h.ok,
        "pushback": h.pushback,
        "timeouts": h.timeouts,
        "broken": h.broken,
        "broken_ratio": round(h.broken_ratio, 4),
        "probe_ok_streak": h.probe_ok_streak,
        "probe_fail_streak": h.probe_fail_streak,
    }


def _no_params(action: str, params: dict[str, Any]) -> None:
    if params:
        raise ValueError(f"{action} takes no parameters (got: {', '.join(sorted(params))})")
