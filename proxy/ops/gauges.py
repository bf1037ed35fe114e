"""The gate's gauges, refreshed once per tick (never on the request path)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..config import PRIORITY_CLASSES
from .drain import gate_drain

if TYPE_CHECKING:
    from ..admission.gate import AdmissionGate


def update_gauges(gate: AdmissionGate, now: float) -> None:
    """Set every gauge the gate owns from its current state."""
    m = gate.metrics
    m.limit.set(gate.limiter.limit)
    m.limit_floor.set(gate.limiter.least)
    m.shield_remaining.set(gate.modes.shield_remaining(now))
    for prio, n in zip(PRIORITY_CLASSES, gate.queue.by_priority(), strict=True):
        m.queue_depth_children[prio].set(n)
    floor = gate.limiter.floor.value
    m.latency_floor.set(floor if floor is not None else 0.0)
    m.pace.set(gate.estimates.pace)
    m.loop_lag.set(gate.control.loop.lag)
    m.arrival_rate.set(gate.control.rates.rate(now))
    m.arrival_baseline.set(gate.control.rates.baseline or 0.0)
    m.retry_share.set(gate.control.rates.retry_share(now))
    m.slots_live.set(gate.pacer.total)
    _caller_gauges(gate)
    if gate.config.retry_budget.enabled:
        _budget_gauges(gate, now)
    _drain_gauges(gate)


def _drain_gauges(gate: AdmissionGate) -> None:
    """RECOVERY's backlog, drain pace and expected time to drain; 0 in the other modes."""
    m = gate.metrics
    d = gate_drain(gate)
    if d is None:
        m.drain_backlog.set(0)
        m.drain_pace.set(0)
        m.drain_eta.set(0)
        return
    m.drain_backlog.set(d.backlog)
    m.drain_pace.set(d.pace)
    # +Inf, not a number that looks like an estimate: at this pace it does not drain.
    m.drain_eta.set(d.eta if d.eta is not None else math.inf)


def _caller_gauges(gate: AdmissionGate) -> None:
    """In-flight and queued per configured caller; the fair buckets summed as "other"."""
    m = gate.metrics
    other_flight = other_queue = 0
    for c in gate.callers:
        if c.label == "other":
            other_flight += c.in_flight
            other_queue += c.queued
            continue
        child = m.caller_in_flight_children.get(c.label)
        if child is not None:
            child.set(c.in_flight)
        qchild = m.caller_queue_children.get(c.label)
        if qchild is not None:
            qchild.set(c.queued)
    m.caller_in_flight_children["other"].set(other_flight)
    m.caller_queue_children["other"].set(other_queue)


def _budget_gauges(gate: AdmissionGate, now: float) -> None:
    """Retry budget left per configured caller, the buckets' lowest as "other", global."""
    m = gate.metrics
    other_budget = math.inf
    for c in gate.callers:
        remaining = gate.budgets.remaining(c.index, now)
        if c.label == "other":
            other_budget = min(other_budget, remaining)
            continue
        child = m.budget_children.get(c.label)
        if child is not None:
            child.set(remaining)
    if other_budget != math.inf:
        m.budget_children["other"].set(other_budget)
    m.budget_global.set(gate.budgets.remaining_global(now))
