"""The backend's capacity the gradient limiter's gate measures while saturated (fake clock):
robust to one odd run, and following a sustained change within two samples."""

from __future__ import annotations

import pytest

from proxy.admission.estimates import Estimates

from ._admission import make_config

TICK = 0.1


def _run(est: Estimates, now: float, rate: float, seconds: float) -> float:
    """Saturated ticks answering `rate` per second for `seconds`; returns the clock after."""
    for _ in range(round(seconds / TICK)):
        now += TICK
        est.saturated(now, round(rate * TICK), measurable=True)
    return now


def _measured(rate: float) -> tuple[Estimates, float]:
    est = Estimates(make_config(), 0.0)
    now = _run(est, 0.0, rate, 3.1)  # the first tick starts the run: six whole samples
    assert est.capacity == pytest.approx(rate)
    return est, now


def test_a_halving_lowers_the_capacity_within_two_samples() -> None:
    # The best sample of the last 10 s kept a backend that lost half its workers at its old
    # capacity for 10 s: returns booked at twice what it serves.
    est, now = _measured(100.0)
    now = _run(est, now, 50.0, 2 * 0.5)  # two runs of `run_min` (0.5 s) at the halved rate
    assert est.capacity == pytest.approx(50.0)


def test_one_fast_run_does_not_raise_it() -> None:
    # A busy loop reads answers in bursts: one run counts more than the backend delivered.
    est, now = _measured(100.0)
    now = _run(est, now, 300.0, 0.5)
    assert est.capacity == pytest.approx(100.0)
    _run(est, now, 100.0, 0.5)
    assert est.capacity == pytest.approx(100.0)


def test_one_slow_run_does_not_lower_it() -> None:
    est, now = _measured(100.0)
    now = _run(est, now, 30.0, 0.5)  # a limit cut, a stall
    assert est.capacity == pytest.approx(100.0)
    _run(est, now, 100.0, 0.5)
    assert est.capacity == pytest.approx(100.0)


def test_a_doubling_raises_it_within_two_samples() -> None:
    est, now = _measured(100.0)
    _run(est, now, 200.0, 2 * 0.5)
    assert est.capacity == pytest.approx(200.0)
