"""`python -m loadtest.calendar_replay`: a run's refusals booked again through the pacer."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.calendar_replay import booking_pace, refusals, replay, table
from proxy.config import SheddingConfig


def _status(pace: float, measured: bool = False, queue: int = 0) -> dict[str, Any]:
    return {
        "pace_rps": pace,
        "pace_measured": measured,
        "signals": {"arrival_baseline": 0.0},
        "queue": {"total": queue},
        "client_patience_s": 2.0,
    }


def test_only_the_backlogs_refusals_with_a_retry_after_in_sending_order() -> None:
    rows = [
        [1, 0, 0, 2.0, 2.1, "503 overload", 1.0],
        [1, 1, 0, 1.0, 1.1, "429 retry-budget", 2.0],
        [2, 0, 0, 0.5, 0.6, "503 overload", 1.0],  # fresh workflow
        [1, 2, 0, 3.0, 3.1, "200", None],
        [3, 0, 0, 0.1, None, "timeout", None],
    ]
    assert [r[3] for r in refusals(rows, {1, 3})] == [1.0, 2.0]


def test_a_first_try_is_booked_with_the_waves_boost_a_return_at_the_plain_pace() -> None:
    assert booking_pace(_status(100.0), True, 1.5, 1.1) == 150.0
    assert booking_pace(_status(100.0), False, 1.5, 1.1) == 100.0
    assert booking_pace(_status(100.0, measured=True), False, 1.5, 1.1) == pytest.approx(110.0)


def test_rebookings_at_a_recovered_pace_fill_the_seconds_a_low_pace_left_thin() -> None:
    cfg = SheddingConfig.model_validate({"retry_after_min": "1s"})
    t0 = 100.0
    samples = [(t0, _status(100.0)), (t0 + 0.5, _status(10.0)), (t0 + 2.0, _status(50.0))]
    rows = [[i, 0, 0, t0, t0, "503 overload", 1.0] for i in range(150)]
    rows += [[i, 1, 0, t0 + 0.5, t0 + 0.5, "503 overload", 1.0] for i in range(50)]
    rows += [[i, 2, 0, t0 + 2.0, t0 + 2.0, "503 overload", 1.0] for i in range(100)]
    told, booked = replay(cfg, rows, samples, t0, boost=1.0)
    assert sum(booked.values()) == sum(told.values()) == 300
    # The 50 booked at 10/s reach second 7; the last 100 go back to the room they left in
    # seconds 3-7, not past them.
    assert max(booked) == 7
    assert "last return" in table(told, booked)
