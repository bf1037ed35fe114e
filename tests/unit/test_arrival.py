"""ArrivalClock: a request handled after a long loop iteration is stamped before it.

The clock reads `time.monotonic` for its heartbeats; here that is a fake the test moves
(`FakeTime`), and the heartbeat's period is 0, so it beats exactly once per loop iteration
(a `call_later(0)` is due in the next one): the tests count iterations, not milliseconds. How
early the stamp is in wall time on an idle loop, and after a real stall, is printed by
`python -m loadtest.bench_timing`.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.edge import arrival
from proxy.edge.arrival import ArrivalClock


class FakeTime:
    """Stands in for the `time` module in proxy.edge.arrival: `monotonic()` is `now`, and every
    reading is recorded."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.reads: list[float] = []

    def monotonic(self) -> float:
        self.reads.append(self.now)
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(arrival, "time", fake)
    return fake


async def _iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_without_a_heartbeat_it_is_the_handlers_clock() -> None:
    clock = ArrivalClock()
    assert clock.earliest(1234.5) == 1234.5


async def test_a_request_is_stamped_at_the_third_last_heartbeat(fake_time: FakeTime) -> None:
    clock = ArrivalClock(period=0.0)
    fake_time.now = 1.0
    clock.start()
    try:
        for t in (2.0, 3.0, 4.0, 5.0, 6.0):
            fake_time.now = t
            await asyncio.sleep(0)
        beats = fake_time.reads[1:]  # the first reading is the constructor's
        assert len(beats) >= 5 and beats == sorted(beats)
        # The handler's request came in after the poll before last, which followed the
        # third-last heartbeat: never later than it arrived, at most two iterations early.
        assert clock.earliest(7.0) == beats[-3]
        assert beats[-3] < beats[-1]
    finally:
        clock.stop()


async def test_after_a_long_iteration_it_is_before_that_iteration(fake_time: FakeTime) -> None:
    clock = ArrivalClock(period=0.0)
    fake_time.now = 10.0
    clock.start()
    try:
        await _iterations(3)  # an idle loop: heartbeats at 10.0
        fake_time.now = 10.08  # a long iteration (the loop reading a wave): nothing else runs
        await asyncio.sleep(0)  # the iteration whose poll read the requests that came meanwhile
        await asyncio.sleep(0)  # their handler runs in the one after
        # A request that arrived during the stall is stamped no later than the stall began,
        # not at the handler's clock.
        assert clock.earliest(10.09) == 10.0
        await asyncio.sleep(0)  # an iteration later the long one is behind the third-last beat
        assert clock.earliest(10.09) == 10.08
    finally:
        clock.stop()


async def test_never_later_than_now_and_stops(fake_time: FakeTime) -> None:
    clock = ArrivalClock(period=0.0)
    fake_time.now = 50.0
    clock.start()
    await _iterations(3)
    assert clock.earliest(49.0) == 49.0  # a `now` before every heartbeat is left alone
    clock.stop()
    beats = len(fake_time.reads)
    await _iterations(3)
    assert len(fake_time.reads) == beats  # no heartbeat after stop
    assert clock.earliest(60.0) == 60.0


async def test_late_is_the_wait_beyond_an_idle_loops_heartbeats(fake_time: FakeTime) -> None:
    # An upstream answer read after a stall waited for our loop about as long as the stall:
    # its latency looks that much longer than the backend's (the limiter takes it out).
    assert ArrivalClock().late(5.0) == 0.0  # no heartbeat: nothing to tell
    clock = ArrivalClock(period=0.0)
    fake_time.now = 10.0
    clock.start()
    try:
        await _iterations(3)
        assert clock.late(10.0) == 0.0  # the loop kept up
        fake_time.now = 10.08  # a long iteration
        await _iterations(2)
        assert clock.late(10.09) == pytest.approx(0.09)  # since the beat before the stall
    finally:
        clock.stop()
