"""The delivery-rate limiter (limiter.algorithm: delivery) against simulated backends, with a
fake clock: our own loop's lag, cold starts, a backend that slows or recovers, the floor."""

from __future__ import annotations

from collections.abc import Callable

from proxy.config import LimiterConfig
from proxy.control.delivery import DeliveryLimiter

Backend = Callable[[int], float]  # concurrency -> latency at the backend


def workers(n: int, service: float) -> Backend:
    """`n` workers of `service` s: past them, requests queue (latency grows linearly)."""
    return lambda c: service * max(1.0, c / n)


def thrashing(n: int, service: float, thrash: float = 0.5) -> Backend:
    """Like `workers`, but its service slows with its own queue (the simulator's model):
    past `n` in flight it delivers less, not just later."""

    def latency(c: int) -> float:
        queued = max(0, c - n)
        return service * (1.0 + thrash * queued / n) * max(1.0, c / n)

    return latency


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

    def run(
        self, seconds: float, delay: float = 0.0, dt: float = 0.1, waiting: bool = True
    ) -> list[int]:
        """`waiting`: work waits for the limit (False: the traffic, not the limit, is what
        sets the delivery; answers still come at the limit's pace)."""
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
            self.lim.tick(self.t, n, waiting=waiting)
            limits.append(self.lim.limit)
        return limits


def light(lim: DeliveryLimiter, loop: Loop, seconds: float) -> None:
    """Light traffic (a few in flight, nothing waiting): teaches the unloaded latency only."""
    for _ in range(round(seconds / 0.1)):
        lim.add(10, 10 * 0.05, 0, 0)
        loop.t += 0.1
        lim.tick(loop.t, 5, waiting=False)


def test_a_start_under_load_measures_from_the_floor() -> None:
    # Started while the backend is full (RECOVERY from the first seconds): nothing was seen
    # unloaded, so the ramp starts at the floor, where the unloaded latency shows, and
    # climbs to the workers without settling on a queue.
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05, initial=24), 0.0)
    lim.enter_slow_start(0.0, from_floor=True)
    assert lim.limit == lim.config.floor
    loop = Loop(lim, thrashing(10, 0.05))
    limits = loop.run(6.0)
    assert all(9 <= x <= 13 for x in limits[-20:]), limits
    assert lim.pace_known() and lim.pace() >= 0.9 * 200


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


def test_pace_is_the_backends_delivery_once_it_was_seen_full() -> None:
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    loop = Loop(lim, workers(20, 0.05))
    loop.run(0.5)
    # Still ramping from 16 below 20 workers: delivery measures our limit, not the backend,
    # so the pace is a guess of at least what the limit would deliver unloaded.
    assert not lim.pace_known()
    assert lim.pace() >= lim.limit / 0.05 - 1e-6
    loop.run(10.0)
    assert lim.pace_known()
    assert lim.pace() == lim.bandwidth()
    assert 0.9 * 400 <= lim.pace() <= 1.1 * 400  # 20 workers x 50 ms


def test_windows_the_traffic_held_back_teach_nothing() -> None:
    # 16 in flight all the time, but nothing ever waited for the limit (BBR's app-limited
    # samples): the limit neither grows nor counts the backend as measured.
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05), 0.0)
    Loop(lim, workers(45, 0.2)).run(10.0, waiting=False)
    assert lim.limit == 16
    assert not lim.pace_known()
    assert lim.pace() >= 16 / 0.2 - 1e-6


def test_startup_into_a_full_backend_stops_at_the_first_queue() -> None:
    # HyStart's delay test: a ramp entered at 16 in front of 10 thrashing workers must not
    # double into them (its first window has no earlier rate to compare with).
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05, slow_start_factor=1.5), 0.0)
    loop = Loop(lim, thrashing(10, 0.05))
    light(lim, loop, seconds=2.0)
    lim.enter_slow_start(loop.t, from_floor=False)
    limits = loop.run(5.0)
    assert max(limits) <= 16, limits
    assert all(9 <= x <= 13 for x in limits[-20:]), limits[-20:]


def test_a_window_the_queue_slowed_does_not_lower_the_pace() -> None:
    # Light traffic, then a wave with the limit at 24 in front of 10 thrashing workers: the
    # first window delivers 10 / (50 ms x 1.7). The cut must land at the workers, and the
    # pace must come back to about 200 req/s.
    lim = DeliveryLimiter(cfg(latency_tolerance=1.05, initial=24), 0.0)
    loop = Loop(lim, thrashing(10, 0.05))
    light(lim, loop, seconds=2.0)
    limits = loop.run(6.0)
    assert all(9 <= x <= 13 for x in limits[-15:]), limits
    assert lim.pace_known()
    assert lim.pace() >= 0.9 * 200
