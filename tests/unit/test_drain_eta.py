"""How long until it is over: the drain estimate from fake numbers, then as `/status` and the
gauges show it from a gate in RECOVERY (fake clock, explicit ticks)."""

from __future__ import annotations

import math

import pytest

from proxy.control.modes import Mode
from proxy.ops.drain import DrainEstimate, estimate_drain
from proxy.ops.gauges import update_gauges
from proxy.scheduler.waiter import Waiter

from ._admission import Harness

# A limit of 40 and batches of 8: most of a burst of 200 waits in the queue.
BIG = {"limiter": {"initial": 40, "floor": 2, "ceiling": 40}, "recovery": {"batch_size": 8}}


# --- the estimate ----------------------------------------------------------------------------
def test_backlog_over_the_pace_less_the_baseline() -> None:
    d = estimate_drain(queued=300, booked=700, pace=150.0, baseline=50.0)
    assert d == DrainEstimate(queued=300, booked=700, pace=100.0, eta=10.0)
    assert d.backlog == 1000


def test_no_baseline_yet_leaves_the_whole_pace_to_the_backlog() -> None:
    d = estimate_drain(queued=40, booked=0, pace=20.0, baseline=None)
    assert d.pace == 20.0 and d.eta == 2.0


def test_nothing_left_is_drained_now_whatever_the_pace() -> None:
    assert estimate_drain(0, 0, pace=0.0, baseline=30.0).eta == 0.0
    assert estimate_drain(0, 0, pace=100.0, baseline=30.0).eta == 0.0


@pytest.mark.parametrize(("pace", "baseline"), [(50.0, 50.0), (40.0, 60.0), (0.0, None)])
def test_no_drain_pace_means_no_eta(pace: float, baseline: float | None) -> None:
    d = estimate_drain(queued=10, booked=5, pace=pace, baseline=baseline)
    assert d.pace == 0.0  # never negative: fresh traffic takes it all
    assert d.eta is None


def test_the_drain_ends_no_earlier_than_the_last_booked_return() -> None:
    # 100 left at 100/s is one second of work, but the last client told to come back returns
    # in 12 s: it cannot be served before.
    d = estimate_drain(queued=50, booked=50, pace=100.0, baseline=0.0, last_return=12.0)
    assert d.eta == 12.0
    # The calendar bounds only a drain with bookings; a slower drain than the calendar wins.
    assert estimate_drain(50, 0, pace=100.0, baseline=0.0, last_return=12.0).eta == 0.5
    assert estimate_drain(50, 950, pace=50.0, baseline=0.0, last_return=12.0).eta == 20.0


def test_the_backlog_keeps_its_share_of_the_pace_whatever_the_baseline() -> None:
    # Fresh traffic would take all but 2 of 100 req/s; the pacer still books returns at a
    # quarter of the pace, so the drain goes at 25/s, not 2/s.
    d = estimate_drain(queued=0, booked=100, pace=100.0, baseline=98.0, min_share=0.25)
    assert d.pace == 25.0 and d.eta == 4.0
    assert estimate_drain(0, 100, pace=100.0, baseline=10.0, min_share=0.25).pace == 90.0


def test_a_negative_backlog_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        estimate_drain(queued=-1, booked=0, pace=10.0, baseline=None)


# --- the gate's view --------------------------------------------------------------------------
def storm(h: Harness) -> list[Waiter]:
    """RECOVERY with a burst of 200: a batch in flight, the rest queued; one tick after."""
    h.gate.command("recovery")
    results = [h.gate.admit(h.ticket()) for _ in range(200)]
    h.tick()
    return [r for r in results if isinstance(r, Waiter)]


def gauge(h: Harness, name: str) -> float:
    value = h.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_outside_recovery_nothing_is_shown() -> None:
    h = Harness(BIG)
    for _ in range(3):
        h.tick()
    assert h.gate.modes.state is Mode.NORMAL
    assert "drain" not in h.gate.status()
    for name in ("sluice_drain_backlog", "sluice_drain_pace", "sluice_drain_eta_seconds"):
        assert gauge(h, name) == 0.0


def test_status_shows_the_queue_the_bookings_and_the_time_to_drain() -> None:
    h = Harness(BIG)
    assert storm(h)
    gate = h.gate
    assert gate.queue.total > 0
    gate.estimates.pace = 120.0  # what the backend serves, as if measured
    baseline = gate.control.rates.baseline or 0.0
    drain = gate.status()["drain"]
    backlog = gate.queue.total + gate.pacer.total
    assert drain["queued"] == gate.queue.total
    assert drain["booked"] == gate.pacer.total
    assert drain["backlog"] == backlog
    assert drain["pace_rps"] == round(120.0 - baseline, 1)
    last_return = gate.pacer.next_free(h.clock.now)
    assert drain["eta_s"] == round(max(backlog / (120.0 - baseline), last_return), 1)


def test_status_eta_waits_for_the_last_booked_return() -> None:
    # A small queue: most of the burst is refused and booked to come back over the next second.
    h = Harness({**BIG, "queue": {"max_size": 20}})
    storm(h)
    gate = h.gate
    gate.estimates.pace = 1000.0  # the backend could serve the lot in a fifth of a second
    last_return = gate.pacer.next_free(h.clock.now)
    assert gate.pacer.total > 100 and last_return > 0.5
    drain = gate.status()["drain"]
    assert drain["booked"] == gate.pacer.total
    assert drain["eta_s"] == round(last_return, 1)


def test_status_has_no_eta_when_fresh_traffic_takes_all_the_pace() -> None:
    h = Harness(BIG)
    storm(h)
    h.gate.estimates.pace = 0.0
    drain = h.gate.status()["drain"]
    assert drain["backlog"] > 0
    assert drain["pace_rps"] == 0.0 and drain["eta_s"] is None


def test_gauges_follow_the_gate_each_tick_and_reset_when_recovery_ends() -> None:
    h = Harness(BIG)
    storm(h)
    gate = h.gate
    d = estimate_drain(
        gate.queue.total,
        gate.pacer.total,
        gate.estimates.pace,
        gate.control.rates.baseline,
        gate.pacer.next_free(h.clock.now),
        gate.config.shedding.min_return_share,
    )
    assert d.backlog > 0
    assert gauge(h, "sluice_drain_backlog") == d.backlog
    assert gauge(h, "sluice_drain_pace") == pytest.approx(d.pace)
    eta = gauge(h, "sluice_drain_eta_seconds")
    assert eta == (math.inf if d.eta is None else pytest.approx(d.eta))

    gate.estimates.pace = 0.0
    update_gauges(gate, h.clock.now)
    assert gauge(h, "sluice_drain_eta_seconds") == math.inf  # never a made-up number

    gate.command("normal")
    h.tick()
    assert gate.modes.state is Mode.NORMAL
    for name in ("sluice_drain_backlog", "sluice_drain_pace", "sluice_drain_eta_seconds"):
        assert gauge(h, name) == 0.0
