"""The gradient limiter in front of a backend smaller than `limiter.floor` (a member of a
fleet: issue 18's K = 3 and K = 5 split ten workers into 3 or 2 per member), and a storm that
arrives on a limit the traffic never used. On a fake clock, through `_limit_loop`'s closed
loop, with the load-test replays' settings and a backend that slows down with its queue."""

from __future__ import annotations

import pytest

from proxy.control.limiter import Limiter

from ._limit_loop import Backend, Loop
from ._limit_loop import limiter_config as cfg


@pytest.mark.parametrize("n_workers", [2, 3])
def test_a_backend_with_fewer_workers_than_the_floor_keeps_no_queue_past_them(
    n_workers: int,
) -> None:
    # Fleet replay K = 5: 2 workers behind a floor of 4 kept 2-3 queued, the backend
    # thrashed, and the floor re-measured at 4 in flight learned 121 ms for 50 ms.
    # Light traffic first (the replay's warm-up teaches the unloaded latency), then a storm.
    loop = Loop(Limiter(cfg(), 0.0), Backend(n_workers, 0.05, thrash=0.5), offered=1)
    loop.run(3.0)
    loop.offered = None
    loop.lim.enter_slow_start(loop.t, from_floor=True)  # RECOVERY's ramp
    loop.run(10.0)
    tail = loop.run(10.0)
    assert loop.lim.least == n_workers
    assert max(tail) <= n_workers + 1, tail
    assert loop.lim.floor.value == pytest.approx(0.05, rel=0.15)


def test_a_backend_with_more_workers_than_the_floor_keeps_the_configured_floor() -> None:
    loop = Loop(Limiter(cfg(), 0.0), Backend(20, 0.05, thrash=1.0))
    loop.run(15.0)
    assert loop.lim.least == 4


def _storm(workers: int) -> Loop:
    """Light traffic (the unloaded latency), then work always waiting, RECOVERY's ramp."""
    loop = Loop(Limiter(cfg(), 0.0), Backend(workers, 0.093, thrash=0.5), offered=1)
    loop.run(3.0)
    loop.offered = None
    loop.lim.enter_slow_start(loop.t, from_floor=True)
    loop.run(10.0)
    return loop


@pytest.mark.parametrize("before", [6, 8])
def test_least_follows_a_backend_halved_below_the_floor(before: int) -> None:
    # Storm sweep seed 23: 93 ms, halved to 3 workers in the drain; `least` stayed at the 4
    # served before (the best of any window), the backend kept a queue and thrashed.
    loop = _storm(before)
    assert loop.lim.least == 4  # served more than the floor before
    loop.backend.resize(3, loop.t)
    after = loop.run(10.0)
    assert min(after) <= 3, after


def test_a_steady_small_backend_keeps_its_least_through_a_slow_spell() -> None:
    # The windowed maximum forgets only when new windows displace old ones: a steady
    # backend, and one slow window (its service briefly doubled), leave `least` alone.
    loop = _storm(3)
    assert loop.lim.least == 3
    leasts = []
    for i in range(40):
        loop.backend.service = 0.186 if i == 10 else 0.093
        loop.run(0.5)
        leasts.append(loop.lim.least)
    assert min(leasts) == 3, leasts
