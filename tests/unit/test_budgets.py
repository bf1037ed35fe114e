"""Retry budgets: window expiry, floor, ratio, per-caller separation, the global budget."""

from __future__ import annotations

from proxy.admission.budgets import LocalRetryBudgets
from proxy.config import RetryBudgetConfig


def budgets(callers: int = 3, **kw: object) -> LocalRetryBudgets:
    base: dict[str, object] = {
        "ratio": 0.1,
        "floor_per_s": 0.0,
        "global_ratio": 1.0,
        "global_floor_per_s": 100.0,
        "window": "10s",
    }
    base.update(kw)
    return LocalRetryBudgets(RetryBudgetConfig.model_validate(base), callers, 0.0)


def withdraw_all(b: LocalRetryBudgets, caller: int, now: float, limit: int = 10_000) -> int:
    n = 0
    while n < limit and b.try_withdraw(caller, now):
        n += 1
    return n


def test_no_first_tries_and_no_floor_means_no_retries() -> None:
    b = budgets()
    assert not b.try_withdraw(0, 0.5)


def test_floor_alone_allows_floor_times_window() -> None:
    b = budgets(floor_per_s=1.0)
    assert withdraw_all(b, 0, 0.5) == 10
    assert b.remaining(0, 0.5) < 1


def test_ratio_of_first_tries() -> None:
    b = budgets()
    for _ in range(100):
        b.deposit(0)
    assert withdraw_all(b, 0, 0.5) == 10


def test_deposits_expire_after_the_window() -> None:
    b = budgets()
    for _ in range(100):
        b.deposit(0)
    for t in range(1, 10):  # the ticker ages every ring once per bucket (1 s here)
        b.roll(t + 0.5)
    assert b.remaining(0, 9.9) == 10
    b.roll(10.0)
    assert b.remaining(0, 10.0) == 0  # deposited in [0 s, 1 s): gone at 10 s
    assert not b.try_withdraw(0, 10.0)


def test_withdrawals_expire_too() -> None:
    b = budgets(floor_per_s=1.0)
    assert withdraw_all(b, 0, 0.5) == 10
    assert not b.try_withdraw(0, 5.0)
    assert withdraw_all(b, 0, 11.5) == 10  # the first ten left the window


def test_callers_are_separate() -> None:
    b = budgets()
    for _ in range(100):
        b.deposit(0)
    b.roll(0.5)
    assert withdraw_all(b, 1, 0.5) == 0  # caller 1 earned nothing
    assert withdraw_all(b, 0, 0.5) == 10


def test_global_budget_caps_the_sum() -> None:
    b = budgets(callers=3, floor_per_s=1.0, global_ratio=0.0, global_floor_per_s=1.5)
    total = sum(withdraw_all(b, c, 0.5) for c in range(3))
    assert total == 15  # each caller could do 10, together only 15


def test_idle_callers_age_on_roll() -> None:
    b = budgets(callers=2)
    for _ in range(50):
        b.deposit(1)
    b.roll(0.2)
    for t in range(1, 13):  # only the ticker touches caller 1 for 12 s
        b.roll(float(t))
    assert b.remaining(1, 12.0) == 0


def test_reconfigure_keeps_history_unless_the_window_changes() -> None:
    b = budgets()
    for _ in range(100):
        b.deposit(0)
    b.roll(0.5)
    b.reconfigure(
        RetryBudgetConfig.model_validate({"ratio": 0.2, "floor_per_s": 0, "window": "10s"}), 4, 1.0
    )
    assert b.remaining(0, 1.0) == 20
    assert b.remaining(3, 1.0) == 0  # a new caller index exists now
    b.reconfigure(
        RetryBudgetConfig.model_validate({"ratio": 0.2, "floor_per_s": 0, "window": "5s"}), 4, 1.0
    )
    assert b.remaining(0, 1.0) == 0
