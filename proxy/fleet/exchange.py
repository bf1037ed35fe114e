"""What goes out each tick and how what comes in is merged (pure: times and clocks passed in).

Shared through a Redis stream per fleet (`<prefix>:<service>:events`): each tick a sidecar
appends one entry holding its journal's batch (bookings, redemptions, first sightings of call
ids, failures), and reads the entries appended since its last read. A stream rather than
per-tick keys: one XREAD a tick reads every peer's news in order, from where this sidecar left
off (so nothing is read twice, nothing is missed while it keeps up, and a sidecar that rejoins
resumes from its last id), with no list of peers or keys to scan; MAXLEN ~ bounds it, a TTL
renewed by every writer removes it when the fleet is gone.

Entries carry caller *names* (the index space is the same on every sidecar of one config, but
a name is what is compared), the stable key hashes of `classify.stable_hash`, and wall-clock
times: each process converts at the boundary with `offset` = wall clock - its own clock.
What comes in is added to the local memories as foreign entries, under their usual bounds, so
the request path recognises a peer's booking or sighting with no Redis round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..admission.pacing import Pacer
from ..admission.retries import RetryMemory
from ..config import Config
from .journal import Batch
from .peers import PeerView, own_record, read_peers
from .totals import PeerTotals

KINDS: tuple[str, ...] = ("booking", "redemption", "call-id", "failure")
# Entries kept in the stream (MAXLEN ~): one per sidecar and tick with news, so at 10 ticks a
# second and 5 sidecars about 40 s, the longest a booking lives at the default
# retry_after_max is 60 s: a sidecar rejoining reads what is left.
STREAM_MAXLEN = 2048
# Entries read per tick: a sidecar catching up reads 64 per tick, far more than a fleet writes.
READ_COUNT = 64


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one fleet: every key carries the prefix and the service."""

    events: str
    peers: str

    @classmethod
    def of(cls, config: Config) -> Keys:
        """The keys for `fleet.key_prefix` and `fleet.service`."""
        base = f"{config.fleet.key_prefix}:{config.fleet.service}"
        return cls(f"{base}:events", f"{base}:peers")


def lookback(config: Config) -> float:
    """How far back a joining sidecar reads (seconds): the longest a booking or a retry
    sighting is of use."""
    sh = config.shedding
    return max(sh.retry_after_max + 2 * sh.slot_grace, config.retry_detect.fingerprint_ttl)


def _ms(t: float) -> float:
    return round(t, 3)


class Exchange:
    """Encodes this sidecar's batch and merges its peers' into the local memories."""

    def __init__(
        self,
        instance: str,
        names: Sequence[str],
        pacer: Pacer | None,
        memory: Callable[[], RetryMemory],
        on_hint: Callable[[str | None, float], None],
    ) -> None:
        self.instance = instance
        self.names = list(names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.pacer = pacer
        self.memory = memory  # the classifier's, read at each merge (a reload may replace it)
        self.on_hint = on_hint  # (mode, until on our clock) of the strongest peer hint
        self.sent = dict.fromkeys(KINDS, 0)
        self.received = dict.fromkeys(KINDS, 0)
        self.invalid = 0  # entries or items that could not be read
        self.view = PeerView((), (), 0)
        # Fleet totals (step 5): this sidecar's counters out, the peers' summed in.
        self.counters: Callable[[], dict[str, Any]] | None = None
        self.totals: PeerTotals | None = None

    def record(self, wall: float, mode: str, hint_ttl: float) -> bytes:
        """This sidecar's peer record: its mode (the hint) and its counters."""
        counters = self.counters() if self.counters is not None else None
        return own_record(wall, mode, hint_ttl, counters)

    # --- out --------------------------------------------------------------------------------
    def outgoing(self, batch: Batch, offset: float) -> bytes | None:
        """The stream entry's payload for `batch` (None when there is nothing to say);
        `offset` turns this process's clock into the wall clock."""
        if not len(batch):
            return None
        names = self.names
        doc: dict[str, list[list[Any]]] = {
            "b": [[names[c], k, _ms(s + offset), _ms(e + offset)] for c, k, s, e in batch.bookings],
            "r": [[names[c], k, _ms(at + offset)] for c, k, at in batch.redemptions],
            "c": [[k, _ms(at + offset)] for k, at in batch.call_ids],
            "f": [[k, _ms(at + offset)] for k, at in batch.failures],
        }
        for kind, n in zip(KINDS, (len(doc[k]) for k in "brcf"), strict=True):
            self.sent[kind] += n
        return orjson.dumps({"v": 1, **doc})

    # --- in ---------------------------------------------------------------------------------
    def merge(self, entries: Sequence[tuple[str, bytes]], now: float, offset: float) -> None:
        """Merge the peers' stream entries ((instance, payload), oldest first) read at `now`
        (our clock); our own are skipped."""
        for instance, payload in entries:
            if instance == self.instance:
                continue
            try:
                doc: Any = orjson.loads(payload)
                if not isinstance(doc, dict):
                    raise TypeError(type(doc).__name__)
            except (orjson.JSONDecodeError, TypeError):
                self.invalid += 1
                continue
            self._bookings(doc.get("b"), now, offset)
            self._redemptions(doc.get("r"), offset)
            self._sightings(doc.get("c"), doc.get("f"), now, offset)

    def _items(self, raw: Any, width: int) -> list[list[Any]]:
        if not isinstance(raw, list):
            return []
        ok = [i for i in raw if isinstance(i, list) and len(i) == width]
        self.invalid += len(raw) - len(ok)
        return ok

    def _bookings(self, raw: Any, now: float, offset: float) -> None:
        pacer = self.pacer
        for name, key, start, end in self._items(raw, 4):
            caller = self._index.get(name) if isinstance(name, str) else None
            if caller is None or not isinstance(key, int) or not _times(start, end):
                self.invalid += 1
                continue
            self.received["booking"] += 1
            if pacer is not None:
                pacer.add_foreign(caller, key, start - offset, end - offset, now)

    def _redemptions(self, raw: Any, offset: float) -> None:
        pacer = self.pacer
        for name, key, at in self._items(raw, 3):
            caller = self._index.get(name) if isinstance(name, str) else None
            if caller is None or not isinstance(key, int) or not _times(at):
                self.invalid += 1
                continue
            self.received["redemption"] += 1
            if pacer is not None:
                pacer.close(caller, key, at - offset)

    def _sightings(self, calls: Any, failures: Any, now: float, offset: float) -> None:
        memory = self.memory()
        for key, at in self._items(calls, 2):
            if not isinstance(key, int) or not _times(at):
                self.invalid += 1
                continue
            self.received["call-id"] += 1
            memory.call_ids.foreign(key, at - offset, now)
        ttl = memory.failures.ttl
        for key, at in self._items(failures, 2):
            if not isinstance(key, int) or not _times(at):
                self.invalid += 1
                continue
            self.received["failure"] += 1
            if now - (at - offset) <= ttl:
                memory.failures.foreign_failure(key, at - offset)

    def merge_peers(self, records: dict[bytes, bytes], now: float, offset: float) -> PeerView:
        """Read the peers hash; hand the strongest hint in force to `on_hint` on our clock."""
        wall = now + offset
        view = read_peers(records, self.instance, wall)
        self.view = view
        if self.totals is not None:
            self.totals.update(view.peers)
        mode, until = view.hint(wall)
        self.on_hint(mode, until - offset if mode is not None else 0.0)
        return view

    def forget_peers(self) -> None:
        """The link is down: the peers' counters and hints are no longer known, and must not
        hold this sidecar's caps down or its thresholds low (bookings and sightings already
        merged stay: they expire by themselves)."""
        self.view = PeerView((), (), 0)
        if self.totals is not None:
            self.totals.update(())
        self.on_hint(None, 0.0)


def _times(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
