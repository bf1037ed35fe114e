"""The fleet link's part of `/status` and its metrics, from the link's and the pacer's
public tallies (pure: `now` passed in; nothing here does I/O)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .fleet_metrics import FleetMetrics

if TYPE_CHECKING:
    from ..admission.pacing import Pacer
    from ..fleet.link import FleetLink


def fleet_status(link: FleetLink, pacer: Pacer | None, now: float) -> dict[str, Any]:
    """JSON-able state of the link: up or down, who we are, the peers seen, the last good
    exchange's age, what was shared each way, and the hint in force."""
    ex = link.exchange
    view = ex.view
    wall = now + link.offset
    doc: dict[str, Any] = {
        "redis_up": link.up,
        "instance": link.instance,
        "service": link.service,
        "peers": [
            {"instance": p.instance, "mode": p.mode, "seen_s_ago": round(wall - p.seen, 3)}
            for p in view.peers
        ],
        "last_exchange_age_s": (round(now - link.last_ok, 3) if link.last_ok is not None else None),
        "exchanges": {"ok": link.ok, "failed": link.failed},
        "last_error": link.last_error or None,
        "sent": dict(ex.sent),
        "received": dict(ex.received),
        "unshared": link.journal.dropped,
        "invalid": ex.invalid + view.invalid,
        "hint": link.hint_mode,
    }
    if pacer is not None:
        doc["slots"] = {
            "foreign": pacer.foreign,
            "redeemed_foreign": pacer.redeemed_foreign,
            "closed_by_peers": pacer.closed,
        }
    return doc


class FleetMetricsSync:
    """Feeds `FleetMetrics` from the tallies after each exchange (counters by their delta)."""

    def __init__(self, metrics: FleetMetrics, link: FleetLink, pacer: Pacer | None) -> None:
        self.metrics = metrics
        self.link = link
        self.pacer = pacer
        self._last: dict[str, int] = {}
        metrics.exchange_age.set(math.inf)

    def _inc(self, name: str, value: int, counter: Any) -> None:
        delta = value - self._last.get(name, 0)
        if delta > 0:
            counter.inc(delta)
        self._last[name] = value

    def __call__(self, now: float) -> None:
        """Bring the metrics up to date (the link calls this after every attempt)."""
        m, link = self.metrics, self.link
        ex = link.exchange
        m.redis_up.set(1 if link.up else 0)
        m.peers.set(len(ex.view.peers))
        if link.last_ok is not None:
            m.exchange_age.set(max(0.0, now - link.last_ok))
        self._inc("ok", link.ok, m.exchange_ok)
        self._inc("failed", link.failed, m.exchange_failed)
        self._inc("unshared", link.journal.dropped, m.unshared)
        for kind in FleetMetrics.KINDS:
            self._inc(f"sent:{kind}", ex.sent[kind], m.sent[kind])
            self._inc(f"received:{kind}", ex.received[kind], m.received[kind])
        if self.pacer is not None:
            self._inc("redeemed_foreign", self.pacer.redeemed_foreign, m.redeemed_foreign)
            self._inc("closed", self.pacer.closed, m.closed)
        hint = link.hint_mode
        for mode, child in m.hint_children.items():
            child.set(1 if hint == mode else 0)
