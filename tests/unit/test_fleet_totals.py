"""Retry budgets and caller caps as fleet totals (proxy/fleet/totals.py): a sidecar's own
counters go into its peer record, the peers' are summed and count in its decisions."""

from __future__ import annotations

from collections import deque

from proxy.admission.budgets import LocalRetryBudgets
from proxy.admission.callers import Caller
from proxy.config import RetryBudgetConfig
from proxy.fleet.peers import own_record, read_peers
from proxy.fleet.totals import FleetCaps, FleetRetryBudgets, PeerTotals, own_counters

from ._admission import make_config

NAMES = ["orch", "vm", "bucket-0"]
WALL = 1_700_000_000.0
CFG = RetryBudgetConfig.model_validate(
    {"ratio": 0.5, "floor_per_s": 0.0, "global_ratio": 0.5, "global_floor_per_s": 0.0}
)


def callers() -> list[Caller]:
    return [Caller(i, n, n, deque()) for i, n in enumerate(NAMES)]


def peer_record(budgets: LocalRetryBudgets, table: list[Caller]) -> bytes:
    return own_record(WALL, "NORMAL", 5.0, own_counters(budgets, table))


def test_a_caller_s_retries_are_bounded_by_its_first_tries_over_the_fleet() -> None:
    # At peer P, caller vm made 10 first tries (budget 0.5 each) and 3 retries.
    peer = LocalRetryBudgets(CFG, len(NAMES), 0.0)
    for _ in range(10):
        peer.deposit(1)
    for _ in range(3):
        assert peer.try_withdraw(1, 0.1)
    totals = PeerTotals(NAMES)
    totals.update(read_peers({b"p": peer_record(peer, callers())}, "me", WALL).peers)
    assert (totals.deposits[1], totals.withdrawals[1]) == (10, 3)
    assert totals.global_sums == (10, 3)
    # Here vm made no first try: alone, no retry; in the fleet, the 2 left of 0.5 x 10 - 3.
    assert not LocalRetryBudgets(CFG, len(NAMES), 0.0).try_withdraw(1, 0.2)
    here = FleetRetryBudgets(CFG, len(NAMES), 0.0, totals)
    assert here.remaining(1, 0.2) == 2.0
    assert here.try_withdraw(1, 0.2) and here.try_withdraw(1, 0.2)
    assert not here.try_withdraw(1, 0.2)
    assert not here.try_withdraw(0, 0.2)  # another caller's first tries are not vm's


def test_peers_budgets_count_only_while_they_are_heard_from() -> None:
    peer = LocalRetryBudgets(CFG, len(NAMES), 0.0)
    for _ in range(10):
        peer.deposit(1)
    totals = PeerTotals(NAMES)
    totals.update(read_peers({b"p": peer_record(peer, callers())}, "me", WALL).peers)
    assert totals.deposits[1] == 10
    totals.update(read_peers({b"p": peer_record(peer, callers())}, "me", WALL + 60.0).peers)
    assert totals.deposits[1] == 0 and totals.global_sums == (0, 0)


def test_a_cap_is_the_fleet_s_less_what_the_peers_have_in_flight_never_below_one() -> None:
    config = make_config(
        {"callers": {"known": [{"name": "orch", "cap": 5}, {"name": "vm", "cap": 2}]}}
    )
    names = [c.name for c in config.callers.known] + ["bucket-0"]
    busy = [Caller(i, n, n, deque()) for i, n in enumerate(names)]
    busy[0].in_flight, busy[1].in_flight, busy[2].in_flight = 3, 4, 9
    totals = PeerTotals(names)
    totals.update(
        read_peers(
            {b"p": own_record(WALL, "NORMAL", 5.0, own_counters(None, busy))}, "me", WALL
        ).peers
    )
    assert totals.in_flight == [3, 4, 9]
    caps = FleetCaps(lambda: config, totals)
    assert caps.caps(names) == [2, 1, None]  # 5 - 3; 2 - 4 floored at 1; buckets uncapped
    totals.update(())
    assert caps.caps(names) == [5, 2, None]


def test_garbage_counters_are_ignored() -> None:
    totals = PeerTotals(NAMES)
    bad = {"d": {"vm": "x", "nobody": 4}, "w": [1], "f": {"vm": -2}, "g": ["a", 1]}
    totals.update(read_peers({b"p": own_record(WALL, "NORMAL", 5.0, bad)}, "me", WALL).peers)
    assert totals.deposits == [0, 0, 0] and totals.in_flight == [0, 0, 0]
    assert totals.global_sums == (0, 0)


def test_when_the_link_drops_the_peers_counters_and_hints_are_forgotten() -> None:
    from proxy.admission.retries import RetryMemory
    from proxy.fleet.exchange import Exchange

    hints: list[tuple[str | None, float]] = []
    memory = RetryMemory(10, 30.0)
    exchange = Exchange("me", NAMES, None, lambda: memory, lambda m, u: hints.append((m, u)))
    exchange.totals = totals = PeerTotals(NAMES)
    busy = callers()
    busy[1].in_flight = 4
    record = own_record(WALL, "RECOVERY", 5.0, own_counters(None, busy))
    exchange.merge_peers({b"p": record}, 100.0, WALL - 100.0)
    assert totals.in_flight[1] == 4 and hints[-1][0] == "RECOVERY"
    exchange.forget_peers()
    assert totals.in_flight[1] == 0 and hints[-1] == (None, 0.0) and not exchange.view.peers
