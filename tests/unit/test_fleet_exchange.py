"""The fleet's pure parts: the journal, what goes out each tick and how what comes in is
merged into a peer's pacer and retry memory (two sidecars with clocks that differ, no socket),
the stable key hash, and the peers' records and hints."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from proxy.admission.classify import Classifier, stable_hash
from proxy.admission.pacing import Pacer
from proxy.admission.retries import RetryMemory
from proxy.config import SheddingConfig
from proxy.fleet.exchange import KINDS, Exchange, Keys, lookback
from proxy.fleet.journal import Journal
from proxy.fleet.peers import PEER_FORGET, PEER_STALE, own_record, read_peers

from ._admission import make_config

NAMES = ["orch", "vm", "bucket-0", "bucket-1"]
WALL = 1_700_000_000.0


class Sidecar:
    """One sidecar's pure state, on its own monotonic clock (`wall - offset`)."""

    def __init__(self, name: str, offset: float, **shedding: object) -> None:
        cfg: dict[str, object] = {"slot_grace": "500ms", "retry_after_min": "100ms"}
        cfg.update(shedding)
        self.pacer = Pacer(SheddingConfig.model_validate(cfg), len(NAMES))
        self.memory = RetryMemory(1000, 30.0)
        self.journal = Journal()
        self.pacer.journal = self.journal
        self.memory.set_journal(self.journal)
        self.offset = offset
        self.hints: list[tuple[str | None, float]] = []
        self.exchange = Exchange(
            name, NAMES, self.pacer, lambda: self.memory, lambda m, u: self.hints.append((m, u))
        )

    def clock(self, wall: float) -> float:
        return wall - self.offset

    def send(self) -> tuple[str, bytes]:
        payload = self.exchange.outgoing(self.journal.take(), self.offset)
        assert payload is not None
        return self.exchange.instance, payload

    def receive(self, entries: list[tuple[str, bytes]], wall: float) -> None:
        self.exchange.merge(entries, self.clock(wall), self.offset)


@pytest.fixture
def fleet() -> tuple[Sidecar, Sidecar]:
    # Each process's monotonic clock starts elsewhere: only the wall clock is shared.
    return Sidecar("a", offset=WALL - 100.0), Sidecar("b", offset=WALL - 7000.0)


def test_a_return_booked_at_one_sidecar_is_solicited_at_another(
    fleet: tuple[Sidecar, Sidecar],
) -> None:
    a, b = fleet
    key = stable_hash(("vm", "10.0.0.7", "GET", "/token"))
    a.pacer.book(1, a.clock(WALL), pace=10.0, fresh_rate=0.0, queued=0, key=key)
    b.receive([a.send()], WALL + 0.1)
    assert b.pacer.foreign == 1 and b.pacer.by_caller() == {1: 1}
    assert not b.pacer.redeem(1, key + 1, b.clock(WALL + 0.2))  # another key: not its slot
    assert b.pacer.redeem(1, key, b.clock(WALL + 0.2))
    assert (b.pacer.redeemed, b.pacer.redeemed_foreign) == (1, 1)
    # The redemption goes back to the fleet: the booking closes where it was made.
    a.receive([b.send()], WALL + 0.3)
    assert (a.pacer.closed, a.pacer.total, a.pacer.redeemed) == (1, 0, 0)
    assert not a.pacer.redeem(1, key, a.clock(WALL + 0.4))


def test_a_foreign_booking_keeps_its_window_on_the_receiver_s_clock(
    fleet: tuple[Sidecar, Sidecar],
) -> None:
    a, b = fleet
    a.pacer.book(1, a.clock(WALL), pace=1.0, fresh_rate=0.0, queued=20, key=7)
    b.receive([a.send()], WALL)
    # 20 queued at 1/s: the slot is ~20 s away; early by more than the grace is not its slot.
    assert not b.pacer.redeem(1, 7, b.clock(WALL + 5.0))
    assert b.pacer.redeem(1, 7, b.clock(WALL + 20.0))


def test_an_expired_or_unknown_booking_is_not_taken(fleet: tuple[Sidecar, Sidecar]) -> None:
    a, b = fleet
    a.pacer.book(1, a.clock(WALL), pace=10.0, fresh_rate=0.0, queued=0, key=7)
    sender, payload = a.send()
    b.receive([(sender, payload)], WALL + 120.0)  # read long after its window closed
    assert b.pacer.foreign == 0
    doc = orjson.loads(payload)
    doc["b"][0][0] = "not-a-caller"  # another config's caller names
    b.receive([(sender, orjson.dumps(doc))], WALL)
    assert b.pacer.foreign == 0 and b.exchange.invalid == 1


def test_foreign_bookings_are_bounded_like_local_ones(fleet: tuple[Sidecar, Sidecar]) -> None:
    a, _ = fleet
    b = Sidecar("b", offset=0.0, max_bookings=3)
    for key in range(10):
        a.pacer.book(1, a.clock(WALL), pace=100.0, fresh_rate=0.0, queued=0, key=key + 1)
    b.receive([a.send()], WALL)
    assert b.pacer.total == 3 and b.exchange.received["booking"] == 10


def test_a_call_id_seen_at_one_sidecar_makes_a_retry_at_another(
    fleet: tuple[Sidecar, Sidecar],
) -> None:
    a, b = fleet
    assert a.memory.call_ids.sighting(42, a.clock(WALL)) == 0  # a first try at A
    assert a.memory.call_ids.sighting(42, a.clock(WALL + 0.05)) == 1  # a retry, not re-sent
    b.receive([a.send()], WALL + 0.1)
    assert b.exchange.received["call-id"] == 1
    assert b.memory.call_ids.sighting(42, b.clock(WALL + 0.5)) == 1  # a retry at B
    assert b.memory.call_ids.sighting(43, b.clock(WALL + 0.5)) == 0


def test_a_failure_at_one_sidecar_lets_one_repeat_count_as_a_retry_at_another(
    fleet: tuple[Sidecar, Sidecar],
) -> None:
    a, b = fleet
    a.memory.failures.failed(99, a.clock(WALL))
    b.receive([a.send()], WALL + 0.1)
    assert b.memory.failures.redeem(99, b.clock(WALL + 1.0))
    assert not b.memory.failures.redeem(99, b.clock(WALL + 1.1))  # one failure, one retry


def test_what_a_peer_learnt_is_not_sent_on(fleet: tuple[Sidecar, Sidecar]) -> None:
    a, b = fleet
    a.memory.call_ids.sighting(42, a.clock(WALL))
    a.memory.failures.failed(99, a.clock(WALL))
    a.pacer.book(1, a.clock(WALL), pace=10.0, fresh_rate=0.0, queued=0, key=7)
    b.receive([a.send()], WALL)
    assert len(b.journal.take()) == 0  # no echo from B to A (and back)


def test_own_entries_and_garbage_are_skipped(fleet: tuple[Sidecar, Sidecar]) -> None:
    a, _ = fleet
    a.memory.call_ids.sighting(42, a.clock(WALL))
    own = a.send()
    a.receive([own, ("c", b"not json"), ("c", b"[1, 2]"), ("c", b'{"c": [[1], "x"]}')], WALL)
    assert a.exchange.received == dict.fromkeys(KINDS, 0)
    assert a.exchange.invalid == 4


def test_nothing_to_say_sends_nothing(fleet: tuple[Sidecar, Sidecar]) -> None:
    a, _ = fleet
    assert a.exchange.outgoing(a.journal.take(), a.offset) is None


def test_the_journal_is_bounded_and_counts_what_it_drops() -> None:
    j = Journal(cap=2)
    for i in range(5):
        j.booked(0, i, 0.0, 1.0)
        j.sighted(i, 0.0)
    assert j.dropped == 6
    batch = j.take()
    assert (len(batch.bookings), len(batch.call_ids), len(j.take())) == (2, 2, 0)
    j.failed(1, 0.0)
    j.redeemed(0, 1, 0.0)
    j.discard()
    assert j.dropped == 8 and len(j.take()) == 0


def test_keys_carry_the_prefix_and_the_service() -> None:
    keys = Keys.of(make_config({"fleet": {"key_prefix": "p", "service": "idp"}}))
    assert (keys.events, keys.peers) == ("p:idp:events", "p:idp:peers")
    assert lookback(make_config()) >= 60.0  # a booking lives up to retry_after_max


# --- the stable hash ---------------------------------------------------------------------------
def test_the_stable_hash_is_the_same_in_every_process() -> None:
    parts = ("vm", "10.0.0.7", "GET", "/metadata/identity/oauth2/token?resource=x")
    code = (
        "from proxy.admission.classify import stable_hash; "
        f"print(stable_hash({parts!r}), hash({parts!r}))"
    )
    out = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
        out.append(run.stdout.split())
    assert out[0][0] == out[1][0] == str(stable_hash(parts)).encode()
    assert out[0][1] != out[1][1]  # what it replaces in a fleet differs per process
    assert stable_hash(("a", None)) != stable_hash(("a", ""))


def test_a_fleet_s_classifier_keys_requests_by_the_stable_hash() -> None:
    headers = {"x-ms-client-request-id": "abc"}
    standalone = Classifier(make_config())
    fleet = Classifier(make_config({"fleet": {"redis": "redis://127.0.0.1:6379"}}))
    t = fleet.classify("10.0.0.7", "GET", "/token", headers, 0.0, 0.0)
    assert t.call_key == stable_hash(("x-ms-client-request-id", "abc"))
    assert t.fingerprint == stable_hash((None, "10.0.0.7", "GET", "/token"))
    s = standalone.classify("10.0.0.7", "GET", "/token", headers, 0.0, 0.0)
    assert s.fingerprint == hash((None, "10.0.0.7", "GET", "/token"))


# --- peers -------------------------------------------------------------------------------------
def test_peers_their_hints_and_the_stale_ones() -> None:
    records = {
        b"me": own_record(WALL, "RECOVERY", 5.0),
        b"calm": own_record(WALL - 1.0, "NORMAL", 5.0),
        b"recovering": own_record(WALL - 1.0, "RECOVERY", 5.0),
        b"down": own_record(WALL - 4.0, "OUTAGE", 3.0),  # its hint ran out at WALL - 1
        b"quiet": own_record(WALL - PEER_STALE - 1.0, "OUTAGE", 60.0),
        b"gone": own_record(WALL - PEER_FORGET - 1.0, "NORMAL", 5.0),
        b"bad": b"{",
    }
    view = read_peers(records, "me", WALL)
    assert [p.instance for p in view.peers] == ["calm", "down", "recovering"]
    assert sorted(view.stale) == ["bad", "gone"] and view.invalid == 1
    assert view.hint(WALL) == ("RECOVERY", pytest.approx(WALL + 4.0))
    records[b"down"] = own_record(WALL - 1.0, "OUTAGE", 5.0)
    assert read_peers(records, "me", WALL).hint(WALL)[0] == "OUTAGE"  # outage comes first
    assert read_peers({b"calm": records[b"calm"]}, "me", WALL).hint(WALL) == (None, 0.0)


def test_the_hint_reaches_the_controller_on_its_own_clock(fleet: tuple[Sidecar, Sidecar]) -> None:
    a, _ = fleet
    a.exchange.merge_peers({b"b": own_record(WALL, "OUTAGE", 5.0)}, a.clock(WALL), a.offset)
    assert a.hints == [("OUTAGE", pytest.approx(a.clock(WALL + 5.0)))]
    a.exchange.merge_peers({b"b": own_record(WALL, "NORMAL", 5.0)}, a.clock(WALL), a.offset)
    assert a.hints[-1] == (None, 0.0)


def test_a_peer_s_bookings_are_not_this_sidecar_s_backlog(fleet: tuple[Sidecar, Sidecar]) -> None:
    a, b = fleet
    a.pacer.book(1, a.clock(WALL), pace=10.0, fresh_rate=0.0, queued=0, key=7)
    b.pacer.book(1, b.clock(WALL), pace=10.0, fresh_rate=0.0, queued=0, key=8)
    b.receive([a.send()], WALL)
    assert (b.pacer.total, b.pacer.own_total) == (2, 1)
    b.pacer.prune(b.clock(WALL + 120.0))  # both windows pass unused
    assert (b.pacer.total, b.pacer.own_total, b.pacer.expired) == (0, 0, 1)
