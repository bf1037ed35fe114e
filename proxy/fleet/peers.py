"""The peers a sidecar sees and their mode hints (pure; wall-clock times, as shared).

Each sidecar writes one record a tick into the fleet's peers hash: when (wall clock), its mode,
and until when its hint holds (RECOVERY or OUTAGE, renewed every tick while the mode lasts,
`fleet.hint_ttl` ahead). A sidecar that dies stops renewing: its hint runs out by itself, and
its record goes stale and is removed by whoever notices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

HINT_MODES = ("OUTAGE", "RECOVERY")  # in precedence order: an outage anywhere comes first
# A peer not heard from for this long is no longer counted as seen; its record is removed
# after PEER_FORGET. Seconds of wall clock.
PEER_STALE = 10.0
PEER_FORGET = 60.0


def own_record(
    wall: float, mode: str, hint_ttl: float, counters: dict[str, Any] | None = None
) -> bytes:
    """This sidecar's record for the peers hash (`counters`: `totals.own_counters`)."""
    until = wall + hint_ttl if mode in HINT_MODES else 0.0
    doc = {"v": 1, "t": round(wall, 3), "mode": mode, "until": round(until, 3)}
    if counters:
        doc["n"] = counters
    return orjson.dumps(doc)


@dataclass(frozen=True, slots=True)
class Peer:
    """One other sidecar as last heard of."""

    instance: str
    seen: float  # wall clock of its last record
    mode: str
    until: float  # wall clock its hint holds until (0: no hint)
    counters: dict[str, Any]  # its per-caller budget sums and in-flight (`totals`)


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the peers hash said at one exchange."""

    peers: tuple[Peer, ...]  # fresh peers (heard from within PEER_STALE), by instance
    stale: tuple[str, ...]  # instances to remove from the hash (silent past PEER_FORGET)
    invalid: int  # records that could not be read

    def hint(self, wall: float) -> tuple[str | None, float]:
        """The strongest hint in force at `wall`: (mode, until), or (None, 0.0)."""
        for mode in HINT_MODES:
            until = max(
                (p.until for p in self.peers if p.mode == mode and p.until > wall), default=0
            )
            if until:
                return mode, until
        return None, 0.0


def _peer(instance: str, raw: bytes) -> Peer | None:
    try:
        doc: Any = orjson.loads(raw)
        seen, mode, until = float(doc["t"]), str(doc["mode"]), float(doc["until"])
        counters = doc.get("n") or {}
        if not isinstance(counters, dict):
            raise TypeError("counters")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return Peer(instance, seen, mode, until, counters)


def read_peers(records: dict[bytes, bytes], me: str, wall: float) -> PeerView:
    """The peers hash (instance -> record) read at `wall`, this sidecar (`me`) left out."""
    peers: list[Peer] = []
    stale: list[str] = []
    invalid = 0
    for raw_name, raw in records.items():
        instance = raw_name.decode("utf-8", "replace")
        if instance == me:
            continue
        peer = _peer(instance, raw)
        if peer is None:
            invalid += 1
            stale.append(instance)
        elif wall - peer.seen > PEER_FORGET:
            stale.append(instance)
        elif wall - peer.seen <= PEER_STALE:
            peers.append(peer)
    peers.sort(key=lambda p: p.instance)
    return PeerView(tuple(peers), tuple(stale), invalid)
