"""The delivery-rate limiter (limiter.algorithm: delivery) against simulated backends, with a
fake clock: our own loop's lag, cold starts, a backend that slows or recovers, the floor."""

from __future__ import annotations

from collections.abc import Callable

from proxy.config import LimiterConfig
from proxy.delivery import DeliveryLimiter

Backend = Callable[[int], float]  # concurrency -> latency at the backend


def workers(n: int, service: float) -> Backend:
    """`n` workers of `service` s: past them, requests queue (latency grows linearly)."""
    return lambda c: service * max(1.0, c / n)


def cfg(**kw: object) -> LimiterConfig:
    base: dict[str, object] = {"initial": 16, "floor": 4, "ceiling": 1000, "algorithm": "delivery"}
    base.update(kw)
    return LimiterConfig.model_validate(base)


class Loop:
    """A closed loop at the limit (work always waiting) on a fake clock. `delay` is our own
    event loop's: each answer is read that much late (its latency looks longer, and its slot
    is held that much longer), and the ticker notes it as lag."""

    def __init__(self, lim: DeliveryLimiter, backend: Backend, t: float = 0.0) -> None:
        self.lim, self.backend, self.t = lim, backend, t
        self.acc = 0.0

    def run(self, seconds: float, delay: float = 0.0, dt: float = 0.1) -> list[int]:
        limits = []
        for _ in range(round(seconds / dt)):
            n = self.lim.limit
            latency = self.backend(n) + delay
            self.acc += n * dt / latency
            k = int(self.acc)
            self.acc -= k
            self.lim.add(k, k * latency, 0, 0)
            if delay:
                self.lim.note_lag(delay)
            self.t += dt
            self.lim.tick(self.t, n)
            limits.append(self.lim.limit)
        return limits


def test_cold_start_finds_the_workers_it_was_not_told() -> None:
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    loop = Loop(lim, workers(100, 0.05))
    limits = loop.run(10.0)
    # From 16 to about 100 workers: doubling per window, then the BDP (+ the probe cycle).
    assert max(limits[:30]) >= 90
    assert all(90 <= x <= 1.05 * 1.25 * 100 + 1 for x in limits[-30:]), limits[-30:]


def test_a_saturated_loop_does_not_collapse_the_limit() -> None:
    # Learned healthy, then our loop lags 40 ms per answer for 20 s (a storm we read slowly):
    # answers look slow, but the backend is not what is slow.
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    loop = Loop(lim, workers(20, 0.05))
    loop.run(10.0)
    learned = lim.limit
    assert 18 <= learned <= 30
    limits = loop.run(20.0, delay=0.04)
    assert min(limits) >= 0.8 * learned, (learned, min(limits))


def test_a_cold_start_into_a_lagging_loop_still_climbs() -> None:
    # The collapse: the storm arrives with the limiter cold and our loop busy.
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    lim.enter_slow_start(0.0, from_floor=False)
    limits = Loop(lim, workers(20, 0.05)).run(10.0, delay=0.02)
    assert limits[-1] >= 20  # at least the backend's workers (our delay holds some slots)


def test_a_backend_that_slows_lowers_the_limit_within_two_windows() -> None:
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    state = {"w": 40}
    loop = Loop(lim, lambda c: 0.05 * max(1.0, c / state["w"]))
    loop.run(10.0)
    assert lim.limit >= 36
    state["w"] = 20  # half its workers gone
    limits = loop.run(3.0)
    window = lim.config.window
    settled = round(2 * window / 0.1) + 1  # two windows, in 100 ms ticks
    assert limits[settled] <= 20 * 1.05 * 1.3, limits[: settled + 1]
    assert limits[-1] <= 26


def test_a_backend_that_recovers_is_found_again() -> None:
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    state = {"w": 20}
    loop = Loop(lim, lambda c: 0.05 * max(1.0, c / state["w"]))
    loop.run(10.0)
    assert lim.limit <= 26
    state["w"] = 40  # capacity doubled
    limits = loop.run(4.0)
    assert limits[-1] >= 36, limits


def test_stuck_at_the_floor_it_probes_up() -> None:
    # Pushback drove it to the floor; the backend is healthy again and work waits.
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    loop = Loop(lim, workers(20, 0.05))
    for _ in range(30):
        lim.add(5, 0.25, 50, 0)
        loop.t += 0.5
        lim.tick(loop.t, lim.limit)
    assert lim.limit == 4
    limits = loop.run(6.0, delay=0.02)
    assert limits[-1] >= 12, limits


def test_pushback_backs_off_and_idle_traffic_does_not_grow() -> None:
    lim = DeliveryLimiter(cfg(), 0.0)
    t = 0.0
    for _ in range(10):  # 2 of 16 in use: nothing learned about capacity
        lim.add(20, 20 * 0.05, 0, 0)
        t += 0.5
        lim.tick(t, 2)
    assert lim.limit == 16
    lim.add(20, 1.0, 5, 0)
    t += 0.5
    lim.tick(t, 16)
    assert lim.limit == int(16 * lim.config.backoff)
    assert lim.last_change == "backoff"


def test_pace_is_the_median_delivery_not_the_maximum() -> None:
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    Loop(lim, workers(20, 0.05)).run(10.0)
    bw = lim.bandwidth()
    assert bw is not None and lim.pace() <= bw
    assert 0.8 * 400 <= lim.pace() <= 1.1 * 400  # 20 workers x 50 ms
