"""The gate's part of the admin `/status` document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import PRIORITY_CLASSES
from ..control.modes import Mode
from ..control.signals import UpstreamHealth
from ..scheduler.tiers import TIER_NAMES
from .drain import gate_drain

if TYPE_CHECKING:
    from ..admission.gate import AdmissionGate


def gate_status(gate: AdmissionGate) -> dict[str, Any]:
    """JSON-able state of the gate: mode, limit, estimates, queue, slots, signals; in
    RECOVERY the drain (backlog, pace, expected time), in SHIELD its TTL and allow-list."""
    now = gate.now()
    modes = gate.modes
    doc: dict[str, Any] = {
        "mode": modes.state.value,
        "mode_reason": modes.reason,
        "mode_for_s": round(now - modes.since, 3),
        "protection": gate.config.modes.protection,
        "dry_run": gate.dry_run,
        "draining": gate.draining,
        **_limit_doc(gate),
        "in_flight": gate.in_flight,
        "queue": _queue_doc(gate),
        "slots": _slots_doc(gate, now),
        "signals": {
            "arrival_rate": round(gate.control.rates.rate(now), 2),
            "arrival_baseline": (
                round(gate.control.rates.baseline, 2)
                if gate.control.rates.baseline is not None
                else None
            ),
            "retry_share": round(gate.control.rates.retry_share(now), 4),
            "upstream": _health_doc(gate.control.health, now),
        },
        "transitions": [t.to_dict(now) for t in reversed(modes.history)],
    }
    if gate.config.retry_budget.enabled:
        doc["retry_budget"] = {
            "global": round(gate.budgets.remaining_global(now), 2),
            **{
                c.name: round(gate.budgets.remaining(c.index, now), 2)
                for c in gate.callers[: gate.caller_table.n_known]
            },
        }
    drain = _drain_doc(gate)
    if drain is not None:
        doc["drain"] = drain
    if modes.state is Mode.SHIELD:
        doc["shield"] = {
            "remaining_s": round(modes.shield_remaining(now), 3),
            "allow": sorted(modes.shield_allow),
        }
    return doc


def _limit_doc(gate: AdmissionGate) -> dict[str, Any]:
    """The limit, what it is learnt from, and our own loop's lateness."""
    lim = gate.limiter
    cfg = gate.config.limiter
    floor = lim.floor.value
    est = gate.estimates
    return {
        "limit": lim.limit,
        "limit_in_force": min(gate.eff, lim.limit),
        "limit_bounds": [lim.least, cfg.ceiling],
        "limit_last_change": lim.last_change,
        "limit_algorithm": cfg.algorithm,
        "loop_lag_ms": round(gate.control.loop.lag * 1000, 1),
        "loop_stall_ms": round(gate.control.loop.stall * 1000, 1),
        "busy": gate.control.loop.busy,
        "slow_start": lim.slow_start,
        "latency_floor_ms": round(floor * 1000, 2) if floor is not None else None,
        "pace_rps": round(est.pace, 1),
        "pace_measured": est.pace_known,
        "client_patience_s": round(est.patience, 3),
    }


def _drain_doc(gate: AdmissionGate) -> dict[str, Any] | None:
    """In RECOVERY, how long until it is over (`eta_s` null: no drain at this pace)."""
    d = gate_drain(gate)
    if d is None:
        return None
    return {
        "backlog": d.backlog,
        "queued": d.queued,
        "booked": d.booked,
        "pace_rps": round(d.pace, 1),
        "pace_measured": gate.estimates.pace_known,
        "eta_s": round(d.eta, 1) if d.eta is not None else None,
    }


def _queue_doc(gate: AdmissionGate) -> dict[str, Any]:
    q = gate.queue
    return {
        "total": q.total,
        "max": gate.config.queue.max_size,
        "by_priority": dict(zip(PRIORITY_CLASSES, q.by_priority(), strict=True)),
        "by_tier": dict(zip(TIER_NAMES, q.by_tier(), strict=True)),
        "by_caller": {c.name: c.queued for c in gate.callers if c.queued},
    }


def _slots_doc(gate: AdmissionGate, now: float) -> dict[str, Any]:
    pacer = gate.pacer
    return {
        "booked": pacer.total,
        "by_caller": {gate.callers[i].name: n for i, n in pacer.by_caller().items()},
        "next_free_in_ms": round(pacer.next_free(now) * 1000),
        "total_booked": pacer.booked,
        "redeemed": pacer.redeemed,
        "expired": pacer.expired,
    }


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
