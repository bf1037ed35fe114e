"""Both limiters held to one suite, through the `Limit` interface only (`make_limiter`)."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.config import LimiterConfig
from proxy.control.delivery import DeliveryLimiter
from proxy.control.limit import Limit, make_limiter
from proxy.control.limiter import Limiter
from proxy.tuning import DELIVERY, GRADIENT, DeliveryTuning, GradientTuning

ALGORITHMS = ["gradient", "delivery"]


def cfg(algorithm: str, **kw: object) -> LimiterConfig:
    base: dict[str, object] = {"initial": 16, "floor": 4, "ceiling": 1000, "algorithm": algorithm}
    base.update(kw)
    return LimiterConfig.model_validate(base)


def drive(lim: Limit, n_workers: int, service: float, seconds: float, t: float) -> float:
    """A closed loop at the limit against `n_workers` workers of `service` s (past them,
    requests queue); ticks every 50 ms. Returns the clock."""
    dt = 0.05
    acc = 0.0
    for _ in range(round(seconds / dt)):
        n = lim.limit
        latency = service * max(1.0, n / n_workers)
        acc += n * dt / latency
        k = int(acc)
        acc -= k
        since = lim.measuring_since  # answers to requests sent before it judge nothing
        clean = k if since is not None and t - latency >= since else 0
        lim.add(k, k * latency, 0, 0, clean, clean * latency)
        t += dt
        lim.tick(t, n)
    return t


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_factory_builds_the_limiter_the_config_names(algorithm: str) -> None:
    lim = make_limiter(cfg(algorithm), 0.0)
    assert type(lim) is (DeliveryLimiter if algorithm == "delivery" else Limiter)
    assert lim.limit == 16
    assert lim.config.algorithm == algorithm
    assert lim.last_change == "initial"
    assert lim.floor.value is None and lim.latency is None and lim.knee_at is None
    assert not lim.slow_start and not lim.probing
    # The gradient limiter judges what was sent since its limit last changed (from the start
    # on); the delivery limiter reads no clean answers.
    assert lim.measuring_since == (0.0 if algorithm == "gradient" else None)
    assert lim.pace() > 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_finds_workers_within_its_bounds_and_learns_the_floor(algorithm: str) -> None:
    lim = make_limiter(cfg(algorithm), 0.0)
    lim.enter_slow_start(0.0, from_floor=False)
    assert lim.slow_start and lim.growing() and lim.last_change == "slow-start"
    drive(lim, 40, 0.05, 30.0, 0.0)
    assert 4 <= lim.limit <= 1000
    assert lim.limit >= 30  # found most of the 40 workers, told nothing
    assert lim.floor.value == pytest.approx(0.05, rel=0.2)
    assert lim.latency is not None and lim.pace() > 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pushback_backs_off_and_marks_the_knee(algorithm: str) -> None:
    lim = make_limiter(cfg(algorithm, backoff=0.5), 0.0)
    t = drive(lim, 40, 0.05, 10.0, 0.0)
    before = lim.limit
    lim.add(100, 5.0, 50, 0)
    t += 1.0
    assert lim.tick(t, lim.limit)
    assert lim.limit < before
    assert lim.last_change == "backoff" and lim.knee_at == t and not lim.slow_start


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reconfigure_clamps_and_keeps_what_was_learned(algorithm: str) -> None:
    lim = make_limiter(cfg(algorithm), 0.0)
    drive(lim, 40, 0.05, 10.0, 0.0)
    floor = lim.floor.value
    lim.reconfigure(cfg(algorithm, initial=8, ceiling=8))
    assert lim.limit == 8 and lim.config.ceiling == 8
    assert lim.floor.value == floor


def test_only_the_delivery_limiter_measures_its_pace() -> None:
    gradient = make_limiter(cfg("gradient"), 0.0)
    drive(gradient, 20, 0.05, 20.0, 0.0)
    assert not gradient.pace_known()  # Little's law at the limit: an estimate, always
    delivery = make_limiter(cfg("delivery"), 0.0)
    assert not delivery.pace_known()  # nothing seen yet


def test_tuning_defaults_are_frozen_and_variants_are_taken() -> None:
    assert GradientTuning() == GRADIENT and DeliveryTuning() == DELIVERY
    with pytest.raises(dataclasses.FrozenInstanceError):
        GRADIENT.used = 0.5  # type: ignore[misc]
    lim = Limiter(cfg("gradient"), 0.0, dataclasses.replace(GRADIENT, assumed_latency=0.5))
    assert lim.pace() == pytest.approx(16 / 0.5)
    assert make_limiter(cfg("gradient"), 0.0).pace() == pytest.approx(16 / 0.1)
