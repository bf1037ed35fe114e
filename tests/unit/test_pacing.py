"""Paced Retry-After: slots spread at the learned pace, solicited returns recognised."""

from __future__ import annotations

import math
import random

import pytest

from proxy.admission.pacing import Pacer
from proxy.config import SheddingConfig


def pacer(callers: int = 3, **kw: object) -> Pacer:
    base: dict[str, object] = {
        "retry_after_min": "1s",
        "retry_after_max": "60s",
        "slot": "100ms",
        "slot_grace": "200ms",
    }
    base.update(kw)
    return Pacer(SheddingConfig.model_validate(base), callers)


def test_returns_are_spread_at_the_return_pace() -> None:
    p = pacer()
    # Pace 100/s, nothing fresh expected: one return every 10 ms, ten per 100 ms slot.
    ms = [p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0) for _ in range(100)]
    assert ms[0] == 1000  # never sooner than retry_after_min
    assert ms == sorted(ms)
    per_slot: dict[int, int] = {}
    for m in ms:
        per_slot[m] = per_slot.get(m, 0) + 1
    assert max(per_slot.values()) <= 10  # flat: no slot gets more than the pace allows
    assert ms[-1] == 2000  # 100 returns at 100/s span one second


def test_slots_are_whole_slot_steps() -> None:
    p = pacer()
    for _ in range(37):
        ms = p.book(1, 0.0, pace=30.0, fresh_rate=0.0, queued=0)
        assert ms % 100 == 0


def test_fresh_traffic_leaves_room_but_not_all() -> None:
    p = pacer()
    a = [p.book(0, 0.0, pace=100.0, fresh_rate=60.0, queued=0) for _ in range(40)]
    assert a[-1] == 1000 + 1000  # 40 returns at 40/s
    q = pacer()
    b = [q.book(0, 0.0, pace=100.0, fresh_rate=1000.0, queued=0) for _ in range(25)]
    assert b[-1] == 2000  # floor: min_return_share 25 % of the pace


def test_queued_work_goes_first() -> None:
    p = pacer()
    assert p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=500) == 5000


def test_not_before_pushes_past_a_shield() -> None:
    p = pacer()
    assert p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0, not_before=30.0) == 30000


def test_horizon_is_capped_at_retry_after_max() -> None:
    p = pacer(retry_after_max="5s")
    ms = [p.book(0, 0.0, pace=10.0, fresh_rate=0.0, queued=0) for _ in range(200)]
    assert max(ms) == 5000
    assert ms.count(5000) > 100  # saturated: the rest are told the maximum


def test_the_calendar_moves_with_time_and_fills_gaps() -> None:
    p = pacer()
    for _ in range(30):
        p.book(0, 0.0, pace=10.0, fresh_rate=0.0, queued=0)  # 10/s: seconds 1, 2 and 3
    assert p.next_free(0.0) == pytest.approx(3.9)
    assert p.book(0, 100.0, pace=10.0, fresh_rate=0.0, queued=0) == 1000  # long past: free
    # A faster pace later finds room in buckets booked at a slower one.
    q = pacer()
    slow = [q.book(0, 0.0, pace=5.0, fresh_rate=0.0, queued=0) for _ in range(10)]
    assert max(slow) == 2800
    fast = q.book(0, 0.0, pace=20.0, fresh_rate=0.0, queued=0)
    assert fast < max(slow)


def test_buckets_filled_at_a_low_pace_are_refilled_when_the_pace_recovers() -> None:
    # The sweep's seed 8: a wave booked at a high (optimistic) pace, its returns refused
    # again and rebooked just after a limit cut at a low pace, then more rebookings once the
    # pace had recovered, though not to the wave's. The recovered pace must go back to the
    # seconds the low pace left thin, not past them (they read full at the wave's pace).
    p = pacer()
    wave = [p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0) for _ in range(200)]
    assert max(wave) == 3000  # seconds 1 and 2 at 100/s
    thin = [p.book(0, 0.5, pace=10.0, fresh_rate=0.0, queued=0) for _ in range(50)]
    assert max(thin) == pytest.approx(7400, abs=100)  # seconds 3 to 7 at 10/s
    later = [p.book(0, 2.0, pace=50.0, fresh_rate=0.0, queued=0) for _ in range(100)]
    # Seconds 3 to 7 had room for 40 more each at 50/s: all 100 land there, none after.
    assert max(later) < 6000
    assert max(later) < max(thin)


def test_what_the_calendar_remembers_only_saves_looks() -> None:
    # Bookings at paces that go up and down (first tries boosted, returns not; a limit cut,
    # a ramp) land where a look at every second from the start would put them.
    rng = random.Random(16)
    p = pacer(retry_after_min="1s", retry_after_max="60s")  # never reached: 40 s at most
    occupied: dict[int, int] = {}
    now = 0.0
    for _ in range(3000):
        now += rng.choice((0.0, 0.0, 0.0, 0.01))
        pace = rng.choice((12.0, 30.0, 45.0, 80.0, 150.0)) * rng.uniform(0.9, 1.1)
        ms = p.book(0, now, pace=pace, fresh_rate=0.0, queued=0, remember=False)
        start = now + 1.0
        second = int(start)
        while True:  # the reference: the first second with room, looked at one by one
            place = max(occupied.get(second, 0), math.ceil((start - second) * pace - 1e-9))
            if place < pace:
                occupied[second] = place + 1
                break
            second += 1
        at = min(now + 60.0, math.ceil((second + place / pace) / 0.1 - 1e-9) * 0.1)
        assert ms == max(1, math.ceil((at - now) * 1000.0 - 1e-6))


def test_redeem_inside_the_booked_window_once() -> None:
    p = pacer()
    ms = p.book(2, 0.0, pace=100.0, fresh_rate=0.0, queued=0, key=77)
    assert ms == 1000
    assert not p.redeem(2, 77, 0.5)  # too early
    assert not p.redeem(1, 77, 1.0)  # another caller
    assert not p.redeem(2, 78, 1.0)  # another request of the same caller
    assert p.redeem(2, 77, 0.9)  # within grace before the slot
    assert not p.redeem(2, 77, 1.0)  # used up
    assert (p.redeemed, p.total) == (1, 0)


def test_without_fingerprints_the_callers_oldest_slot_counts() -> None:
    p = pacer()
    p.book(2, 0.0, pace=100.0, fresh_rate=0.0, queued=0)
    p.book(2, 0.0, pace=100.0, fresh_rate=0.0, queued=0)
    assert p.redeem(2, 0, 1.0) and p.redeem(2, 0, 1.05)
    assert not p.redeem(2, 0, 1.1)


def test_identical_requests_each_keep_their_slot() -> None:
    # Every pod of one identity sends the same request: each refused pod is owed a return.
    p = pacer()
    first = p.book(0, 0.0, pace=2.0, fresh_rate=0.0, queued=0, key=5)
    second = p.book(0, 0.0, pace=2.0, fresh_rate=0.0, queued=0, key=5)
    assert (first, second) == (1000, 1500)  # two places, 1/pace apart
    assert p.total == 2
    assert p.redeem(0, 5, 1.0)  # the first pod, on time
    assert p.redeem(0, 5, 1.5)  # the second, on time: its slot was not replaced
    assert not p.redeem(0, 5, 1.5)  # both used
    assert (p.redeemed, p.total) == (2, 0)


def test_a_retry_after_only_client_is_recognised_at_the_whole_second() -> None:
    p = pacer()
    for i in range(150):
        p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0, key=i + 1)
    # The last booking says 2.5 s: Retry-After says 3 s; a client reading only that comes at 3.
    assert p.redeem(0, 150, math.ceil(2.5) + 0.1)


def test_a_whole_second_reader_held_before_its_answer_is_recognised_after_its_slot() -> None:
    # Booked 0.8 s ahead and answered after a 0.6 s hold: Retry-After 200 ms, whose header
    # says 1 s, so a client reading only the header comes back at 1.6 s, 0.8 s after its
    # slot. The window ends a second after the slot (plus grace), wherever the hold was.
    p = pacer(retry_after_min="800ms")
    assert p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0, key=9) == 800
    assert p.redeem(0, 9, 0.6 + 1.0)
    p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0, key=10)  # its slot: 0.81 -> 0.9 s
    assert not p.redeem(0, 10, 0.9 + 1.0 + 0.2 + 0.01)  # past the second and the grace


def test_expired_bookings_are_forgotten() -> None:
    p = pacer()
    for i in range(5):
        p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0, key=i + 1)
    assert p.total == 5 and p.by_caller() == {0: 5}
    p.prune(10.0)
    assert p.total == 0 and p.expired == 5 and p.by_caller() == {}
    assert not p.redeem(0, 1, 10.0)


def test_bookings_are_bounded() -> None:
    p = pacer(max_bookings=10)
    for i in range(50):
        assert p.book(0, 0.0, pace=100.0, fresh_rate=0.0, queued=0, key=i + 1) >= 1000
    assert p.total == 10 and p.booked == 50
