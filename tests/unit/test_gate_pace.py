"""The pace the gate books returns at and judges solicited waits by (fake clock, no I/O)."""

from __future__ import annotations

import pytest

from proxy.gate import _TIER_REST, _TIER_SOLICITED, _TIERS

from ._admission import NORMAL_PRIORITY, Harness


def _measured(h: Harness, capacity: float, baseline: float) -> None:
    g = h.gate
    g._capacity = capacity
    g._n_samples = 3
    g.rates.baseline = baseline
    g._refresh_estimates(h.clock())
    assert g._pace_known and g._pace == capacity


def test_headroom_widens_the_returns_share_not_the_whole_pace() -> None:
    # 200 req/s, 120 of them fresh: returns get 80/s, and 1.1 x that, not 1.1 x 200 - 120
    # (= 100/s, a 25 % overbooking that bounces returns all drain long).
    h = Harness({"shedding": {"pace_headroom": 1.1}})
    _measured(h, 200.0, 120.0)
    assert h.gate._book_pace - 120.0 == pytest.approx(88.0)


def test_solicited_waits_are_judged_against_the_expected_fresh_traffic() -> None:
    h = Harness()
    _measured(h, 200.0, 100.0)
    g = h.gate
    solicited = NORMAL_PRIORITY * _TIERS + _TIER_SOLICITED
    rest = NORMAL_PRIORITY * _TIERS + _TIER_REST
    assert g._level_pace(solicited) == pytest.approx(100.0)  # 200 - the baseline
    assert g._level_pace(rest) == pytest.approx(80.0)  # 200 - the fresh tier's 1.2 x baseline
