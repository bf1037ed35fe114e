"""The pace the gate books returns at and judges solicited waits by (fake clock, no I/O)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from proxy.contracts import Refusal
from proxy.control.modes import Mode
from proxy.edge.forward import refusal_response
from proxy.scheduler.tiers import TIER_REST as _TIER_REST
from proxy.scheduler.tiers import TIER_SOLICITED as _TIER_SOLICITED
from proxy.scheduler.tiers import TIERS as _TIERS
from proxy.scheduler.waiter import Waiter

from ._admission import NORMAL_PRIORITY, Harness, error, merge, saturate

TICK = 0.1


def _harness(limit: int, extra: dict[str, Any] | None = None) -> Harness:
    """A gate whose limit is pinned at `limit` and whose mode does not move (min_dwell), so
    what it learns about the backend comes only from the outcomes a test feeds it."""
    pinned = {
        "limiter": {"floor": limit, "initial": limit, "ceiling": limit},
        "modes": {"min_dwell": "60m"},
    }
    return Harness(merge(pinned, extra or {}))


def _measured(h: Harness, per_tick: int, baseline: float) -> None:
    """Saturate the backend at `per_tick` answers per tick until the gate has measured its
    pace, then set the fresh baseline the test is about."""
    saturate(h, per_tick)
    status = h.gate.status()
    assert status["pace_measured"] and status["pace_rps"] == pytest.approx(per_tick / TICK)
    h.gate.control.rates.baseline = baseline
    h.gate.refresh_estimates(h.clock())


@pytest.mark.parametrize(("limit", "per_tick"), [(4, 2), (40, 20), (12, 12)])
def test_the_pace_is_the_goodput_measured_while_the_limit_is_full(
    limit: int, per_tick: int
) -> None:
    # A backend that finishes `per_tick` requests every 100 ms while the limit is full and
    # work waits absorbs per_tick / 0.1 s: the pace, measured, whatever the limit is.
    h = _harness(limit)
    assert not h.gate.status()["pace_measured"]  # nothing learnt yet: a guess
    saturate(h, per_tick)
    status = h.gate.status()
    assert status["pace_measured"]
    assert status["pace_rps"] == pytest.approx(per_tick / TICK)
    assert h.metric("sluice_pace") == pytest.approx(per_tick / TICK)


def test_headroom_widens_the_returns_share_not_the_whole_pace() -> None:
    # 200 req/s, 120 of them fresh: returns get 80/s, and 1.1 x that, not 1.1 x 200 - 120
    # (= 100/s, a 25 % overbooking that bounces returns all drain long).
    h = _harness(40, {"shedding": {"pace_headroom": 1.1}})
    _measured(h, 20, 120.0)  # 20 answers per 100 ms: 200/s
    assert h.gate.estimates.book_pace - 120.0 == pytest.approx(88.0)


def test_solicited_waits_are_judged_against_the_expected_fresh_traffic() -> None:
    h = _harness(40)
    _measured(h, 20, 100.0)  # 200/s
    g = h.gate
    solicited = NORMAL_PRIORITY * _TIERS + _TIER_SOLICITED
    rest = NORMAL_PRIORITY * _TIERS + _TIER_REST
    assert g.room.level_pace(solicited) == pytest.approx(100.0)  # 200 - the baseline
    assert g.room.level_pace(rest) == pytest.approx(80.0)  # 200 - the fresh tier's 1.2 x baseline


@pytest.mark.parametrize(
    ("queued", "retry_after_ms", "retry_after_s"),
    [
        (30, 1500, 2),  # 30 ahead at 20/s: 1.5 s; the header rounds up to whole seconds
        (40, 2000, 2),
        (70, 3500, 4),
    ],
)
def test_a_return_is_booked_behind_the_work_queued_ahead_of_it(
    queued: int, retry_after_ms: int, retry_after_s: int
) -> None:
    # The backend absorbs 20/s (2 answers per 100 ms, measured), no fresh traffic is expected
    # yet and returns are booked at the plain pace (no headroom): a request refused behind
    # `queued` waiters comes back after they are served, queued / 20 s from now (never
    # before `retry_after_min`, 1 s), on the 100 ms slot grid.
    h = _harness(
        4,
        {
            "modes": {"outage_min_samples": 3},
            "queue": {"max_size": queued, "patience": "20s", "learn_patience": False},
            "shedding": {"hold_max": "0s", "pace_headroom": 1.0},
            "recovery": {"rate_window": "60s"},  # no fresh baseline learnt meanwhile
        },
    )
    flying, waiting = saturate(h, per_tick=2)
    status = h.gate.status()
    assert status["pace_measured"] and status["pace_rps"] == pytest.approx(20.0)
    assert status["signals"]["arrival_baseline"] is None
    for w in waiting:
        w.cancel()
    h.clock.now = float(math.ceil(h.clock.now))  # on a whole second: slots fall on the grid
    # The backend goes down (3 connect failures in a row): OUTAGE, where arrivals wait
    # (no waiter is judged against a pace while the backend is down) until the queue is full.
    # Down for 0 s so far, the outage pushes no return later: only the queue does.
    for t in flying[:3]:
        h.gate.release(t, error("connect"))
    h.gate.evaluate_now(h.clock())  # what the ticker does as soon as the request is done
    assert h.gate.modes.state is Mode.OUTAGE
    for _ in range(queued):
        assert isinstance(h.gate.admit(h.ticket()), Waiter)
    r = h.gate.admit(h.ticket())
    assert isinstance(r, Refusal) and (r.reason, r.status) == ("outage", 503)
    assert (r.retry_after_ms, r.hold) == (retry_after_ms, 0.0)
    headers = refusal_response(r, None).headers
    assert headers["Retry-After"] == str(retry_after_s)
    assert headers["retry-after-ms"] == str(retry_after_ms)


@pytest.mark.parametrize(("queued", "retry_after_ms"), [(1, 100), (2, 100), (3, 200), (4, 200)])
def test_the_first_return_is_due_when_the_work_ahead_of_it_is_done(
    queued: int, retry_after_ms: int
) -> None:
    # The shipped retry_after_min (100 ms): a request refused behind `queued` waiters at a
    # measured 20/s comes back as the last of them is served, not a fixed second later (the
    # backend idled between the two at every reopening: drains of 1.25-1.29x in the model).
    h = _harness(
        4,
        {
            "queue": {"max_size": queued, "patience": "20s", "learn_patience": False},
            "shedding": {"hold_max": "0s", "pace_headroom": 1.0, "retry_after_min": "100ms"},
            "recovery": {"rate_window": "60s"},  # no fresh baseline learnt meanwhile
        },
    )
    _flying, waiting = saturate(h, per_tick=2)
    for w in waiting:
        w.cancel()
    assert h.gate.pacer.total == 0
    h.clock.now = float(math.ceil(h.clock.now))  # on a whole second: slots fall on the grid
    for _ in range(queued):
        assert isinstance(h.gate.admit(h.ticket()), Waiter)
    r = h.gate.admit(h.ticket())
    assert isinstance(r, Refusal) and r.reason == "overload"
    assert (r.retry_after_ms, r.hold) == (retry_after_ms, 0.0)
    assert refusal_response(r, None).headers["Retry-After"] == "1"  # whole seconds, rounded up
