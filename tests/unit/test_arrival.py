"""ArrivalClock: a request handled after a long loop iteration is stamped before it."""

from __future__ import annotations

import asyncio
import time

from proxy.arrival import ArrivalClock


async def _iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_without_a_heartbeat_it_is_the_handlers_clock() -> None:
    clock = ArrivalClock()
    now = time.monotonic()
    assert clock.earliest(now) == now


async def test_on_an_idle_loop_it_is_a_few_milliseconds_early_at_most() -> None:
    clock = ArrivalClock(period=0.001)
    clock.start()
    try:
        await asyncio.sleep(0.05)
        now = time.monotonic()
        assert now - 0.02 < clock.earliest(now) <= now
    finally:
        clock.stop()


async def test_after_a_long_iteration_it_is_before_that_iteration() -> None:
    clock = ArrivalClock(period=0.001)
    clock.start()
    try:
        await asyncio.sleep(0.01)
        before_stall = time.monotonic()
        time.sleep(0.08)  # noqa: ASYNC251 (the loop reading a wave: nothing else runs)
        await _iterations(3)  # the handler runs an iteration or two later
        now = time.monotonic()
        assert now - before_stall >= 0.08
        # A request that arrived during the stall is stamped no later than the stall began
        # (plus one heartbeat period of slack), not at the handler's clock.
        assert clock.earliest(now) <= before_stall + 0.002
    finally:
        clock.stop()


async def test_never_later_than_now_and_stops() -> None:
    clock = ArrivalClock(period=0.001)
    clock.start()
    await asyncio.sleep(0.005)
    past = time.monotonic() - 1.0
    assert clock.earliest(past) == past
    clock.stop()
    now = time.monotonic()
    assert clock.earliest(now) == now
