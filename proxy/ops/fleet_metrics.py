"""The fleet link's metrics (`sluice_fleet_*`), registered only with `fleet.redis` configured."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class FleetMetrics:
    """The fleet link's metrics, registered only when `fleet.redis` is configured (standalone
    serves none of them). Counters follow the link's and the pacer's own tallies once per
    exchange (`ops.fleet.update_fleet_metrics`); nothing here is touched by a request."""

    KINDS: tuple[str, ...] = ("booking", "redemption", "call-id", "failure")

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.redis_up = Gauge(
            "sluice_fleet_redis_up",
            "1 while the fleet link exchanges with Redis; 0 while it is down (local state only).",
            registry=r,
        )
        self.exchanges = Counter(
            "sluice_fleet_exchanges",
            "Exchanges with Redis by result (failed: an error, or over fleet.op_timeout).",
            ["result"],
            registry=r,
        )
        self.exchange_ok = self.exchanges.labels("ok")
        self.exchange_failed = self.exchanges.labels("failed")
        self.peers = Gauge(
            "sluice_fleet_peers", "Other sidecars of the fleet heard from lately.", registry=r
        )
        self.exchange_age = Gauge(
            "sluice_fleet_last_exchange_age_seconds",
            "Seconds since the last good exchange with Redis (+Inf before the first).",
            registry=r,
        )
        self.shared = Counter(
            "sluice_fleet_shared",
            "Entries shared with the fleet, by kind and direction (sent, received).",
            ["kind", "direction"],
            registry=r,
        )
        self.sent = {k: self.shared.labels(k, "sent") for k in self.KINDS}
        self.received = {k: self.shared.labels(k, "received") for k in self.KINDS}
        self.unshared = Counter(
            "sluice_fleet_unshared",
            "Entries not shared: over the per-tick cap, or learnt while the link was down.",
            registry=r,
        )
        self.redeemed_foreign = Counter(
            "sluice_fleet_slots_redeemed_foreign",
            "Solicited returns whose slot another sidecar of the fleet booked.",
            registry=r,
        )
        self.closed = Counter(
            "sluice_fleet_slots_closed",
            "Booked slots closed here because a peer redeemed them.",
            registry=r,
        )
        self.hint = Gauge(
            "sluice_fleet_hint",
            "1 for the mode a peer sidecar hints (RECOVERY or OUTAGE) while the hint holds.",
            ["mode"],
            registry=r,
        )
        self.hint_children = {m: self.hint.labels(m) for m in ("RECOVERY", "OUTAGE")}
