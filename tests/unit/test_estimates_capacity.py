"""The backend's capacity the gradient limiter's gate measures while saturated (fake clock):
robust to one odd run, following a sustained change within two samples, and not taken below
half of it by runs past the knee (a thrashing backend's goodput)."""

from __future__ import annotations

import pytest

from proxy.admission.estimates import Estimates

from ._admission import make_config

TICK = 0.1


FLOOR, TOLERANCE = 0.1, 1.25  # the unloaded latency, the limiter's tolerance at the knee


def _run(
    est: Estimates, now: float, rate: float, seconds: float, latency: float | None = None
) -> float:
    """Saturated ticks answering `rate` per second for `seconds`, each answer after `latency`
    (None: no latency known); returns the clock after."""
    for _ in range(round(seconds / TICK)):
        now += TICK
        ok = round(rate * TICK)
        if latency is None:
            est.saturated(now, ok, measurable=True)
        else:
            est.saturated(now, ok, True, ok * latency, FLOOR * TOLERANCE)
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


AT_KNEE, THRASHED = 1.2 * FLOOR, 5 * FLOOR


def test_a_thrashed_backend_past_the_knee_takes_it_no_lower_than_half() -> None:
    # Storm sweep seeds 13 and 23: half the workers gone, the limit still above the new knee
    # for seconds, and the backend thrashing at a fifth of what the halved backend serves.
    # Measured as its capacity, the returns refused then were booked at that pace, tens of
    # seconds out, and the backend idled once the limit had come down.
    est, now = _measured(100.0)
    _run(est, now, 10.0, 3.0, THRASHED)  # six runs past the knee
    assert est.capacity == pytest.approx(50.0)


def test_runs_back_at_the_knee_then_measure_the_halved_backend() -> None:
    est, now = _measured(100.0)
    now = _run(est, now, 10.0, 3.0, THRASHED)
    now = _run(est, now, 40.0, 2 * 0.5, AT_KNEE)  # a loss deeper than half is followed too
    assert est.capacity == pytest.approx(40.0)


def test_runs_past_the_knee_still_raise_it() -> None:
    # A backend that queues delivers at least what it delivers: a doubling seen while the
    # limit overshoots the new knee raises the capacity as before.
    est, now = _measured(100.0)
    _run(est, now, 200.0, 2 * 0.5, THRASHED)
    assert est.capacity == pytest.approx(200.0)
