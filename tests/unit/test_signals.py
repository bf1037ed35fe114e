"""Sliding windows: outcome classes, error window, arrival baseline, latency floor."""

from __future__ import annotations

import pytest

from proxy.control.signals import (
    BROKEN,
    IGNORE,
    OK,
    PUSHBACK,
    TIMEOUT,
    ArrivalRate,
    LatencyFloor,
    SlidingSums,
    UpstreamHealth,
    classify_outcome,
)

FAST = 0.05


@pytest.mark.parametrize(
    ("status", "latency", "error", "kind"),
    [
        (200, 0.01, None, OK),
        (404, 0.01, None, OK),
        (429, 0.001, None, PUSHBACK),
        (503, 0.001, None, PUSHBACK),  # the backend's own pushback, even when fast
        (500, 0.001, None, BROKEN),  # fast 5xx: broken
        (500, 0.5, None, PUSHBACK),  # slow 5xx: it worked hard and gave up: busy
        (502, 0.01, None, BROKEN),
        (None, 0.001, "connect", BROKEN),
        (None, 5.0, "connect", BROKEN),
        (None, 30.0, "timeout", TIMEOUT),
        (None, 0.001, "reset", BROKEN),
        (None, 2.0, "reset", PUSHBACK),
        (None, 0.001, "protocol", BROKEN),
        (None, 1.0, "cancelled", IGNORE),
    ],
)
def test_outcome_classes(status: int | None, latency: float, error: str | None, kind: int) -> None:
    assert classify_outcome(status, latency, error, FAST) == kind


def test_sliding_sums_expire() -> None:
    s = SlidingSums(window=1.0, fields=2, buckets=10)
    s.add(100.0, (1, 2))
    s.add(100.55, (3, 4))
    assert s.totals(100.6) == [4.0, 6.0]
    assert s.totals(101.05) == [3.0, 4.0]  # the first bucket left the window
    assert s.totals(102.0) == [0.0, 0.0]
    s.add(102.0, (1, 1))
    s.reset()
    assert s.totals(102.0) == [0.0, 0.0]


def test_upstream_health_ratios_and_streaks() -> None:
    h = UpstreamHealth(window=5.0)
    h.record(10.0, ok=6, pushback=2, timeouts=1, broken=1)
    v = h.view(10.0)
    assert (v.samples, v.broken_ratio, v.pushback_ratio, v.answering) == (10, 0.1, 0.3, True)
    assert h.view(16.0).samples == 0
    h.record(20.0, 0, 0, 3, 0)
    assert not h.view(20.0).answering  # timeouts are not answers
    h.probe(False)
    h.probe(False)
    assert h.view(20.0).probe_fail_streak == 2
    h.probe(True)
    assert (h.probe_ok_streak, h.probe_fail_streak) == (1, 0)
    h.reset_probes()
    h.reset_window()
    assert h.view(20.0).samples == 0 and h.probe_ok_streak == 0


def test_arrival_baseline_learns_only_when_told() -> None:
    r = ArrivalRate(window=2.0, halflife=10.0, start=0.0)
    t = 0.0
    for _ in range(50):  # 5 s at 100/s, learning (in 0.1 s chunks: +-1 chunk per window)
        t += 0.1
        r.record(t, 10, 0)
        r.update_baseline(t, learning=True)
    assert r.baseline == pytest.approx(100.0, rel=0.06)
    for _ in range(300):  # 30 s of a 5x surge, frozen (not NORMAL)
        t += 0.1
        r.record(t, 50, 25)
        r.update_baseline(t, learning=False)
    assert r.baseline == pytest.approx(100.0, rel=0.06)
    assert r.surge_ratio(t) == pytest.approx(5.0, rel=0.1)
    assert r.retry_share(t) == pytest.approx(0.5)
    r.rebase(t)
    assert r.surge_ratio(t) == pytest.approx(1.0)
    assert r.baseline == pytest.approx(500.0, rel=0.06)


def test_the_baseline_counts_first_tries_only() -> None:
    # Sweep seed 39, a cold start: the baseline was seeded 2.6 s after the release from
    # everything arriving, 335/s of returns and retries for 15.5/s of fresh traffic. The
    # backend's share for returns (its pace less the baseline) fell to its floor, and the
    # whole backlog was booked 3x too far out. Retries and solicited returns are not the
    # fresh traffic the baseline stands for.
    r = ArrivalRate(window=2.0, halflife=10.0, start=0.0)
    t = 0.0
    for _ in range(30):  # 3 s: 20/s fresh, 100/s returns, 200/s retries
        t += 0.1
        r.record(t, 32, 20, 10)
        r.update_baseline(t, learning=True)
    assert r.baseline == pytest.approx(20.0, rel=0.1)
    assert r.rate(t) == pytest.approx(320.0, rel=0.1)  # the surge ratio still sees them all


def test_arrival_baseline_follows_slowly_when_learning() -> None:
    r = ArrivalRate(window=1.0, halflife=10.0, start=0.0)
    t = 0.0
    for _ in range(120):  # past its first half-life (a plain mean until then)
        t += 0.1
        r.record(t, 10, 0)
        r.update_baseline(t, learning=True)
    for _ in range(30):  # 3 s at 3x while learning: the baseline moves, but not all the way
        t += 0.1
        r.record(t, 30, 0)
        r.update_baseline(t, learning=True)
    assert r.baseline is not None and 100 < r.baseline < 200
    assert r.surge_ratio(t) > 1.5


def test_no_baseline_means_no_surge() -> None:
    r = ArrivalRate(window=2.0, halflife=10.0, start=0.0)
    r.record(0.5, 1000, 0)
    r.update_baseline(0.5, learning=True)
    assert r.baseline is None
    assert r.surge_ratio(0.5) == 0.0


def test_latency_floor_moves_down_quickly_and_up_only_by_reset() -> None:
    f = LatencyFloor()
    f.observe(0.0, 0.050)
    f.observe(0.5, 0.030)  # one low window moves it only part of the way (noise)
    assert 0.030 < (f.value or 0) < 0.050
    for _ in range(20):
        f.observe(1.0, 0.040)
    assert f.value == pytest.approx(0.040, abs=1e-4)
    f.observe(2.0, 0.200)  # a loaded window does not raise it
    assert f.value == pytest.approx(0.040, abs=1e-4)
    assert f.confirmed_at == 1.0
    f.observe(3.0, 0.043)  # within 10 %: confirms
    assert f.confirmed_at == 3.0
    assert not f.stale(20.0, 30.0)
    assert f.stale(33.0, 30.0)
    assert not f.stale(1e9, 0.0)  # interval 0: never
    f.reset_to(40.0, 0.080)
    assert f.value == 0.080 and not f.stale(41.0, 30.0)


def test_a_baseline_seeded_before_traffic_started_catches_up() -> None:
    # One early request (a readiness check, a first client) seeds the baseline near zero;
    # the traffic that follows must not look like a surge for minutes.
    r = ArrivalRate(window=2.0, halflife=60.0, start=0.0)
    r.record(0.1, 1, 0)
    t = 0.1
    for _ in range(25):  # 2.5 s of almost nothing: the seed
        t += 0.1
        r.update_baseline(t, learning=True)
    assert r.baseline is not None and r.baseline < 1.0
    for _ in range(60):  # 6 s at 100/s
        t += 0.1
        r.record(t, 10, 0)
        r.update_baseline(t, learning=True)
    assert r.baseline == pytest.approx(100.0, rel=0.25)
    for _ in range(600):  # a minute later, a 3x step still stands out
        t += 0.1
        r.record(t, 10, 0)
        r.update_baseline(t, learning=True)
    for _ in range(10):
        t += 0.1
        r.record(t, 30, 0)
        r.update_baseline(t, learning=True)
    assert r.surge_ratio(t) > 1.5


def test_no_baseline_is_seeded_before_the_first_arrival() -> None:
    r = ArrivalRate(window=2.0, halflife=60.0, start=0.0)
    t = 0.0
    for _ in range(50):  # 5 s up, nobody calling yet
        t += 0.1
        r.update_baseline(t, learning=True)
    assert r.baseline is None
    for _ in range(40):  # then 100/s
        t += 0.1
        r.record(t, 10, 0)
        r.update_baseline(t, learning=True)
    assert r.baseline == pytest.approx(100.0, rel=0.15)
