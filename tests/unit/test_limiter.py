"""The learned concurrency limit, against simulated backends (no capacity in the config)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from proxy.config import LimiterConfig
from proxy.control.limiter import Limiter

Backend = Callable[[int], float]  # concurrency -> latency


def workers(n: int, service: float) -> Backend:
    """A backend with `n` workers: past them, requests queue (latency grows linearly)."""
    return lambda c: service * max(1.0, c / n)


def rate(per_s: float, service: float) -> Backend:
    """A backend serving `per_s` requests/s: past that, latency is the queue's drain time."""
    return lambda c: max(service, c / per_s)


def drive(
    lim: Limiter,
    backend: Backend,
    seconds: float,
    t: float,
    offered: int | None = None,
    dt: float = 0.1,
) -> tuple[float, list[int]]:
    """Run a closed loop: `offered` concurrent requests (default: always at the limit)."""
    acc = 0.0
    limits = []
    for _ in range(round(seconds / dt)):
        n = lim.limit if offered is None else min(lim.limit, offered)
        latency = backend(n)
        acc += n * dt / latency
        k = int(acc)
        acc -= k
        since = lim.measuring_since
        clean = k if since is not None and t - latency >= since else 0
        lim.add(k, k * latency, 0, 0, clean, clean * latency)
        t += dt
        lim.tick(t, n)
        limits.append(lim.limit)
    return t, limits


def cfg(**kw: object) -> LimiterConfig:
    base: dict[str, object] = {"initial": 16, "floor": 4, "ceiling": 1000}
    base.update(kw)
    return LimiterConfig.model_validate(base)


@pytest.mark.parametrize("n_workers", [20, 40, 150])
def test_finds_a_worker_pool_capacity_it_was_not_told(n_workers: int) -> None:
    lim = Limiter(cfg(), 0.0)
    _, limits = drive(lim, workers(n_workers, 0.05), 120.0, 0.0)
    tail = limits[-300:]  # the last 30 s
    assert max(tail) <= 2 * n_workers  # its queue stays within one round of its workers
    # The backend is kept busy, except for the brief unloaded-latency re-measurement.
    assert sum(limit < n_workers for limit in tail) <= 0.03 * len(tail)


def test_finds_a_rate_limited_backend() -> None:
    lim = Limiter(cfg(), 0.0)
    _, limits = drive(lim, rate(400.0, 0.02), 120.0, 0.0)  # 8 in flight saturate it
    tail = limits[-300:]
    assert max(tail) <= 16
    assert sum(limit < 8 for limit in tail) <= 0.03 * len(tail)


def test_slow_start_doubles_until_queueing_then_settles() -> None:
    lim = Limiter(cfg(window="500ms"), 0.0)
    lim.enter_slow_start(0.0, from_floor=True)
    assert lim.limit == 4 and lim.slow_start and lim.growing()
    t, limits = drive(lim, workers(100, 0.05), 2.0, 0.0)
    assert limits[-1] >= 16  # 4 -> 8 -> 16 -> 32 in four half-second windows
    t, limits = drive(lim, workers(100, 0.05), 20.0, t)
    assert not lim.slow_start
    assert 100 <= limits[-1] <= 200


def test_idle_traffic_does_not_grow_the_limit() -> None:
    lim = Limiter(cfg(), 0.0)
    _, limits = drive(lim, workers(1000, 0.05), 30.0, 0.0, offered=5)
    assert limits[-1] == 16  # 5 in flight never used half of 16
    assert not lim.growing()


def test_growth_stops_when_usage_stops_and_is_then_not_growing() -> None:
    lim = Limiter(cfg(initial=4), 0.0)
    t, limits = drive(lim, workers(1000, 0.05), 10.0, 0.0, offered=30)
    assert lim.limit >= 30
    t, limits = drive(lim, workers(1000, 0.05), 10.0, t, offered=30)
    assert max(limits) == min(limits) <= 60 + 10  # stops one sqrt step past twice the use
    assert not lim.growing()


def test_pushback_backs_off_to_the_floor_not_below() -> None:
    lim = Limiter(cfg(initial=100, backoff=0.5), 0.0)
    t = 0.0
    seen = []
    for _ in range(20):
        lim.add(5, 0.05, 20, 0)
        t += 0.5
        lim.tick(t, lim.limit)
        seen.append(lim.limit)
    assert seen[0] == 50 and seen[1] == 25
    assert seen[-1] == 4


def test_broken_answers_back_off_too() -> None:
    lim = Limiter(cfg(initial=100), 0.0)
    lim.add(50, 2.5, 0, 10)
    lim.tick(0.5, 100)
    assert lim.limit == 90 and lim.last_change == "backoff"


def test_ceiling_is_respected() -> None:
    lim = Limiter(cfg(ceiling=30), 0.0)
    lim.enter_slow_start(0.0, from_floor=False)
    _, limits = drive(lim, workers(1000, 0.01), 20.0, 0.0)
    assert max(limits) == 30


def test_too_few_answers_move_nothing() -> None:
    lim = Limiter(cfg(min_samples=10), 0.0)
    t = 0.0
    for _ in range(40):
        lim.add(1, 5.0, 0, 0, 1, 5.0)  # one very slow answer per tick: 5 per window, < 10
        t += 0.1
        changed = lim.tick(t, 16)
        if t < 0.95:
            assert not changed
    # windows stretch until they hold enough answers, then decide
    assert lim.floor.value is not None


def test_floor_re_measurement_undoes_a_start_under_load() -> None:
    # Started at 150 in flight on a 20-worker backend: the first windows are all queued,
    # so the "unloaded" latency looks 7.5x too high. Without re-measuring, the limit stays
    # inflated; with it, it finds the real capacity.
    stuck = Limiter(cfg(initial=150, floor_probe_interval="0s"), 0.0)
    _, limits = drive(stuck, workers(20, 0.05), 120.0, 0.0)
    assert min(limits[-100:]) > 2 * 20

    lim = Limiter(cfg(initial=150, floor_probe_interval="30s"), 0.0)
    _, limits = drive(lim, workers(20, 0.05), 150.0, 0.0)
    assert lim.floor.value == pytest.approx(0.05, rel=0.2)
    assert max(limits[-100:]) <= 2 * 20


def test_re_measurement_is_skipped_when_not_allowed() -> None:
    lim = Limiter(cfg(initial=150, floor_probe_interval="5s"), 0.0)
    t = 0.0
    acc = 0.0
    for _ in range(300):
        latency = 0.05 * lim.limit / 20
        acc += lim.limit * 0.1 / latency
        k = int(acc)
        acc -= k
        lim.add(k, k * latency, 0, 0, k, k * latency)
        t += 0.1
        lim.tick(t, lim.limit, may_probe=False)
        assert not lim.probing


def test_pace_is_littles_law() -> None:
    lim = Limiter(cfg(), 0.0)
    assert lim.pace() == pytest.approx(16 / 0.1)  # nothing measured: assume 100 ms
    drive(lim, workers(20, 0.05), 60.0, 0.0)
    assert lim.pace() == pytest.approx(20 / 0.05, rel=0.15)  # 400/s, the backend's capacity


def test_reconfigure_keeps_what_was_learned() -> None:
    lim = Limiter(cfg(), 0.0)
    drive(lim, workers(40, 0.05), 60.0, 0.0)
    learned, floor = lim.limit, lim.floor.value
    lim.reconfigure(cfg(ceiling=500, knee_growth=2.0))
    assert (lim.limit, lim.floor.value) == (learned, floor)
    lim.reconfigure(cfg(initial=8, floor=4, ceiling=10))
    assert lim.limit == 10
