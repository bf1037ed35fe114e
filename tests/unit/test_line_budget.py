"""`LineBudget`, the token bucket behind the access log's and the upstream failure log's
pacing: a second's burst, then a steady rate, everything refused counted."""

from __future__ import annotations

import itertools

from proxy.logs import LineBudget


def allowed(budget: LineBudget, now: float, rate: float, n: int) -> int:
    return sum(budget.allow(now, rate) for _ in range(n))


def test_a_burst_gets_one_second_s_worth_and_the_rest_is_counted() -> None:
    budget = LineBudget(now=0.0)
    assert allowed(budget, 0.0, 100.0, 250) == 100
    assert budget.suppressed == 150


def test_a_storm_gets_a_steady_rate_spread_over_the_second() -> None:
    budget = LineBudget(now=0.0)
    allowed(budget, 0.0, 10.0, 10)  # the burst is spent
    budget.take_suppressed()
    # 20,000 a second for two seconds: ten lines a second, one every 0.1 s (2,000 steps).
    steps = [k for k in range(40_000) if budget.allow(k / 20_000, 10.0)]
    assert len(steps) == 19  # at 0.1 s, 0.2 s ... 1.9 s
    assert all(1999 <= b - a <= 2001 for a, b in itertools.pairwise(steps))
    assert budget.suppressed == 40_000 - 19


def test_take_suppressed_collects_the_count_once() -> None:
    budget = LineBudget(now=0.0)
    allowed(budget, 0.0, 1.0, 5)
    assert budget.take_suppressed() == 4
    assert budget.take_suppressed() == 0
    assert budget.suppressed == 0


def test_the_burst_refills_after_a_quiet_spell_but_never_past_a_second() -> None:
    budget = LineBudget(now=0.0)
    allowed(budget, 0.0, 50.0, 50)
    assert allowed(budget, 60.0, 50.0, 80) == 50  # a minute of quiet: still one second's burst


def test_below_one_line_a_second_one_line_is_the_burst() -> None:
    budget = LineBudget(now=0.0)
    assert allowed(budget, 0.0, 0.5, 3) == 1
    assert not budget.allow(1.0, 0.5)
    assert budget.allow(2.0, 0.5)  # one every two seconds


def test_rate_zero_writes_nothing_and_counts_everything() -> None:
    budget = LineBudget(now=0.0)
    assert allowed(budget, 0.0, 0.0, 7) == 0
    assert allowed(budget, 100.0, 0.0, 3) == 0
    assert budget.suppressed == 10


def test_a_new_rate_applies_from_the_next_line() -> None:
    budget = LineBudget(now=0.0)
    allowed(budget, 0.0, 100.0, 100)
    # A reload lowers the rate: the refill and the burst both follow it.
    assert allowed(budget, 1.0, 5.0, 20) == 5


def test_an_older_now_adds_nothing() -> None:
    budget = LineBudget(now=10.0)
    allowed(budget, 10.0, 1.0, 1)
    assert not budget.allow(5.0, 1.0)  # a clock read before the last one
    assert not budget.allow(10.5, 1.0)  # half a second after the last real one: half a token
    assert budget.allow(11.0, 1.0)
