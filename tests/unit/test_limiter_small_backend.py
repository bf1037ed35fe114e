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
