"""Every Sluice metric, defined once, with label children pre-bound at start-up.

Labels are bounded: reasons and error kinds come from closed tables, callers only from the
configured list (all other callers are `other`), modes from the controller's four states,
status classes from `STATUS_CLASSES`. Nothing on the request path formats a label. The
classifier's own counters are fed into these by `classifier_counters`; the fleet link's
metrics are `fleet_metrics.FleetMetrics`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from .. import __version__
from ..admission.retries import SIGNALS
from ..config import PRIORITY_CLASSES
from ..contracts import REASONS, UPSTREAM_ERRORS
from .fleet_metrics import FleetMetrics

MODES: tuple[str, ...] = ("NORMAL", "OUTAGE", "RECOVERY", "SHIELD")
OUTCOMES: tuple[str, ...] = ("forwarded", "refused", "error", "cancelled")
# Envoy's upstream_rq_1xx..5xx, HAProxy's hrsp_1xx..5xx.
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
# `_created` series double the exposition for nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """All metrics of one Sluice process, in their own registry (tests make several).

    The families are defined by concern, one method each; every one registers in
    `self.registry` and pre-binds the label children the request path uses."""

    def __init__(self, callers: Iterable[str] = (), registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.caller_labels: tuple[str, ...] = (*dict.fromkeys(callers), "other")
        self._requests()
        self._upstream()
        self._classification()
        self._config()
        self._controller()
        self._limiter()
        self._queue()
        self._arrivals_and_returns()
        self._retry_budgets()
        self._regions()
        self._drain()
        self._process()
        self.fleet: FleetMetrics | None = None  # add_fleet(), only with `fleet.redis`

    def add_fleet(self) -> FleetMetrics:
        """Register the fleet link's metrics (once)."""
        if self.fleet is None:
            self.fleet = FleetMetrics(self.registry)
        return self.fleet

    def _requests(self) -> None:
        """How requests ended, what is in flight, and refusals held before they are sent."""
        r = self.registry
        self.requests = Counter(
            "sluice_requests",
            "Requests by how they ended and why (reason is empty for forwarded answers).",
            ["outcome", "reason"],
            registry=r,
        )
        self.forwarded = self.requests.labels("forwarded", "")
        self.cancelled = self.requests.labels("cancelled", "")
        self.refused = {reason: self.requests.labels("refused", reason) for reason in REASONS}
        self.in_flight = Gauge(
            "sluice_in_flight", "Requests currently forwarded upstream.", registry=r
        )
        self.caller_in_flight = Gauge(
            "sluice_caller_in_flight", "Forwarded requests by caller.", ["caller"], registry=r
        )
        self.caller_in_flight_children = {
            c: self.caller_in_flight.labels(c) for c in self.caller_labels
        }
        self.held = Counter(
            "sluice_held_refusals",
            "Paced refusals held before they were sent (shedding.hold_max), all reasons.",
            registry=r,
        )
        self.holding = Gauge(
            "sluice_holding", "Refusals being held now, before they are sent.", registry=r
        )

    def _upstream(self) -> None:
        """The upstream's answers: their latency, its failures, the health probes."""
        r = self.registry
        self.upstream_latency = Histogram(
            "sluice_upstream_latency_seconds",
            "Time from forwarding to the upstream's response headers.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "sluice_upstream_errors", "Upstream failures by kind.", ["kind"], registry=r
        )
        self.upstream_error = {k: self.upstream_errors.labels(k) for k in UPSTREAM_ERRORS}
        self.probes = Counter(
            "sluice_upstream_probes", "Active health probes by result.", ["result"], registry=r
        )
        self.probe_ok = self.probes.labels("ok")
        self.probe_failed = self.probes.labels("failed")
        self.upstream_responses = Counter(
            "sluice_upstream_responses",
            "Answers the upstream gave, by status class (also the 5xx Sluice replaced with its "
            "own 503 outage).",
            ["status_class"],
            registry=r,
        )
        by_class = [self.upstream_responses.labels(c) for c in STATUS_CLASSES]
        # Indexed by the status's hundreds digit, so counting formats nothing. A status outside
        # 100-599 is invalid (RFC 9110 section 15): the backend is broken, so it counts as 5xx.
        self._by_status = (by_class[4], *by_class, *[by_class[4]] * 4)

    def _classification(self) -> None:
        """What the classifier made of request headers."""
        r = self.registry
        self.invalid_headers = Counter(
            "sluice_invalid_headers",
            "Attempt/deadline headers present but unusable (treated as absent).",
            registry=r,
        )
        self.retries_recognised = Counter(
            "sluice_retries_recognised",
            "Requests taken for retries, by the signal that recognised them.",
            ["signal"],
            registry=r,
        )
        self.retry_signal = [self.retries_recognised.labels(s) for s in SIGNALS]

    def _config(self) -> None:
        """Config reloads and the generation in force."""
        r = self.registry
        self.config_reloads = Counter(
            "sluice_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.reload_ok = self.config_reloads.labels("ok")
        self.reload_failed = self.config_reloads.labels("invalid")
        self.reload_refused = self.config_reloads.labels("restart-required")
        self.config_info = Gauge(
            "sluice_config_generation",
            "Generation of the config in force (1 at start).",
            registry=r,
        )

    def _controller(self) -> None:
        """The mode controller: the mode, its transitions, SHIELD's TTL, dry-run."""
        r = self.registry
        self.mode = Gauge("sluice_mode", "1 for the mode in force, else 0.", ["mode"], registry=r)
        self.mode_children = {m: self.mode.labels(m) for m in MODES}
        self.transitions = Counter(
            "sluice_mode_transitions",
            "Mode transitions.",
            ["from_mode", "to_mode", "reason"],
            registry=r,
        )
        self.shield_remaining = Gauge(
            "sluice_shield_remaining_seconds",
            "Seconds until SHIELD ends by its TTL (0 outside SHIELD).",
            registry=r,
        )
        self.dry_run = Gauge(
            "sluice_dry_run", "1 while decisions are computed but not enforced.", registry=r
        )
        self.dry_run_decisions = Counter(
            "sluice_dry_run_decisions",
            "Refusals computed in dry-run mode and not enforced.",
            ["reason"],
            registry=r,
        )
        self.dry_run_decision = {
            reason: self.dry_run_decisions.labels(reason) for reason in REASONS
        }
        self.dry_run_deferrals = Counter(
            "sluice_dry_run_deferrals",
            "Requests that would have waited in a queue, admitted at once in dry-run mode.",
            registry=r,
        )

    def _limiter(self) -> None:
        """The learned limit, what it learned of the upstream, and our own loop's lag."""
        r = self.registry
        self.limit = Gauge(
            "sluice_limit", "The learned concurrency limit towards the upstream.", registry=r
        )
        self.limit_floor = Gauge(
            "sluice_limit_floor",
            "limiter.floor in force (the learned limit never goes below).",
            registry=r,
        )
        self.latency_floor = Gauge(
            "sluice_latency_floor_seconds",
            "The upstream's learned unloaded latency (the limiter's yardstick).",
            registry=r,
        )
        self.pace = Gauge(
            "sluice_pace",
            "Requests per second the upstream absorbs at the learned limit (for pacing).",
            registry=r,
        )
        self.loop_lag = Gauge(
            "sluice_event_loop_lag_seconds",
            "How late the last control tick ran: Sluice's own event loop was busy this long "
            "(our saturation, not the backend's).",
            registry=r,
        )

    def _queue(self) -> None:
        """Deferred requests: how many wait, for how long, and RECOVERY's batches."""
        r = self.registry
        self.queue_depth = Gauge(
            "sluice_queue_depth",
            "Deferred requests waiting, by priority.",
            ["priority"],
            registry=r,
        )
        # Every priority from the start: a dashboard sees 0, not "no data", before a queue.
        self.queue_depth_children = {p: self.queue_depth.labels(p) for p in PRIORITY_CLASSES}
        self.caller_queue_depth = Gauge(
            "sluice_caller_queue_depth",
            "Deferred requests waiting, by caller.",
            ["caller"],
            registry=r,
        )
        self.caller_queue_children = {
            c: self.caller_queue_depth.labels(c) for c in self.caller_labels
        }
        self.queue_wait = Histogram(
            "sluice_queue_wait_seconds",
            "Time deferred requests waited before admission or refusal.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.batches = Counter("sluice_batches_released", "Recovery batches released.", registry=r)
        self.batch_requests = Counter(
            "sluice_batch_requests_released", "Deferred requests released in batches.", registry=r
        )

    def _arrivals_and_returns(self) -> None:
        """The arrival rate against its baseline, and the return slots booked for refusals."""
        r = self.registry
        self.arrival_rate = Gauge(
            "sluice_arrival_rate", "Arrivals per second over the rate window.", registry=r
        )
        self.arrival_baseline = Gauge(
            "sluice_arrival_baseline",
            "The arrival-rate baseline (learnt in NORMAL only, frozen otherwise).",
            registry=r,
        )
        self.retry_share = Gauge(
            "sluice_retry_share",
            "Unsolicited retries as a share of arrivals over the rate window.",
            registry=r,
        )
        self.slots_booked = Counter(
            "sluice_retry_slots_booked", "Paced Retry-After slots booked.", registry=r
        )
        self.slots_redeemed = Counter(
            "sluice_retry_slots_redeemed",
            "Solicited returns: callers that came back in their booked slot.",
            registry=r,
        )
        self.slots_live = Gauge(
            "sluice_retry_slots_live",
            "Booked return slots still remembered (not yet redeemed or expired).",
            registry=r,
        )

    def _retry_budgets(self) -> None:
        """Unsolicited retries against their budgets, per caller and for all callers."""
        r = self.registry
        self.retries = Counter(
            "sluice_retries",
            "Unsolicited retries by caller and decision.",
            ["caller", "decision"],
            registry=r,
        )
        self.retry_admitted = {c: self.retries.labels(c, "admitted") for c in self.caller_labels}
        self.retry_refused = {c: self.retries.labels(c, "refused") for c in self.caller_labels}
        self.budget_remaining = Gauge(
            "sluice_retry_budget_remaining",
            "Unsolicited retries the caller may still make in the current window.",
            ["caller"],
            registry=r,
        )
        self.budget_children = {c: self.budget_remaining.labels(c) for c in self.caller_labels}
        self.budget_global = Gauge(
            "sluice_retry_budget_global_remaining",
            "Unsolicited retries all callers together may still make in the current window.",
            registry=r,
        )

    def _regions(self) -> None:
        """Requests from another region (spillover)."""
        self.spillover = Counter(
            "sluice_spillover",
            "Requests from another region, by decision.",
            ["decision"],
            registry=self.registry,
        )
        self.spillover_served = self.spillover.labels("served")
        self.spillover_refused = self.spillover.labels("refused")

    def _drain(self) -> None:
        """RECOVERY's drain: the backlog Sluice knows of, its pace, the time to drain it."""
        r = self.registry
        self.drain_backlog = Gauge(
            "sluice_drain_backlog",
            "In RECOVERY: requests queued plus return slots booked (0 outside RECOVERY).",
            registry=r,
        )
        self.drain_pace = Gauge(
            "sluice_drain_pace",
            "In RECOVERY: requests/s the backlog drains at, the pace less the arrival "
            "baseline (0 outside RECOVERY).",
            registry=r,
        )
        self.drain_eta = Gauge(
            "sluice_drain_eta_seconds",
            "In RECOVERY: expected seconds until the backlog is drained, backlog / drain pace "
            "(+Inf when it does not drain at that pace; 0 outside RECOVERY).",
            registry=r,
        )

    def _process(self) -> None:
        """The build, and the standard `process_*` and `python_*` collectors."""
        r = self.registry
        self.build_info = Gauge(
            "sluice_build_info", "Always 1; the Sluice version as a label.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        # process_* reads /proc (Linux only; elsewhere it exports nothing), python_gc_* reads
        # gc.get_stats(), both at scrape time: no cost on the request path.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def upstream_answered(self, status: int) -> None:
        """Count one upstream answer in its status class."""
        self._by_status[status // 100 % 10].inc()

    def set_mode(self, mode: str) -> None:
        """Set the one-hot mode gauge."""
        for name, child in self.mode_children.items():
            child.set(1 if name == mode else 0)
