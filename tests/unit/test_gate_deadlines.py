"""What a request needs of its deadline to be sent: the expected latency learns from timeouts
(censored samples), and a waiter is sent only with that much of its deadline left."""

from __future__ import annotations

from proxy.admission.estimates import RecentLatency
from proxy.contracts import Refusal, Ticket
from proxy.scheduler.waiter import ADMITTED, REFUSED, Waiter

from ._admission import Harness, error, make_config, ok


def fill(h: Harness, n: int) -> list[Ticket]:
    out = []
    for _ in range(n):
        t = h.ticket()
        assert h.gate.admit(t) is None
        out.append(t)
    return out


def test_timeouts_raise_the_expected_latency() -> None:
    # Nothing answers in time: answers alone would leave the expected latency at nothing,
    # and every request would still be sent with any deadline it has left.
    h = Harness()
    flying = fill(h, 4)
    h.clock.advance(0.6)
    for t in flying:
        h.gate.release(t, error("timeout", 0.6))  # waited 600 ms: it takes at least that
    h.tick()
    assert h.gate.estimates.expected_latency >= 0.6
    refused = h.gate.admit(h.ticket(timeout=0.5))
    assert isinstance(refused, Refusal) and refused.reason == "deadline"
    assert h.gate.admit(h.ticket(timeout=0.8)) is None


def test_a_late_answer_is_a_latency_sample_like_any_other() -> None:
    h = Harness()
    flying = fill(h, 4)
    h.clock.advance(0.7)
    for t in flying:
        h.gate.release(t, ok(0.7))
    h.tick()
    assert h.gate.estimates.expected_latency >= 0.7


def slow_samples(h: Harness, latency: float) -> None:
    flying = fill(h, 4)
    h.clock.advance(latency)
    for t in flying:
        h.gate.release(t, error("timeout", latency))
    h.tick()
    refused = h.gate.admit(h.ticket(timeout=latency))
    assert isinstance(refused, Refusal) and refused.reason == "deadline"


def test_a_bar_above_every_deadline_does_not_stay_without_samples() -> None:
    # Nothing is sent under the bar, so nothing can show it is too high: it ages out.
    h = Harness()
    slow_samples(h, 0.8)
    h.clock.advance(h.gate.tuning.latency_kept)
    h.tick()
    assert h.gate.admit(h.ticket(timeout=0.5)) is None


def test_latencies_of_a_higher_limit_are_forgotten_when_it_is_cut() -> None:
    h = Harness()
    slow_samples(h, 0.8)
    lower = make_config({"limiter": {"initial": 2, "floor": 2, "ceiling": 2}}).limiter
    h.gate.limiter.reconfigure(lower)  # (a cut, as far as the estimates can tell)
    h.tick()
    assert h.gate.estimates.expected_latency < 0.8
    assert h.gate.admit(h.ticket(timeout=0.5)) is None


def test_answers_to_requests_sent_before_the_limit_changed_are_not_samples() -> None:
    h = Harness()
    flying = fill(h, 4)
    h.clock.advance(0.8)
    h.gate.limiter.enter_slow_start(h.clock.now, from_floor=False)  # the limit in force moves
    for t in flying:
        h.gate.release(t, ok(0.8))
    h.tick()
    assert h.gate.estimates.expected_latency < 0.8


def test_the_median_counts_a_timeout_as_what_it_waited_and_forgets() -> None:
    recent = RecentLatency(size=5, kept=5.0)
    for latency in (0.1, 0.1, 0.1):
        recent.add(0.0, latency)
    recent.add(0.0, 0.3)  # timeouts: at least this long
    recent.add(0.0, 0.3)
    assert recent.median(1.0) == 0.1  # the lower median: a lower bound, never above
    for _ in range(3):
        recent.add(2.0, 0.3)  # bounded: the oldest give way
    assert recent.median(2.0) == 0.3
    assert recent.median(7.5) == 0.0  # too old to judge a backend by


def queued_behind_slow_answers(h: Harness, timeout: float) -> Waiter:
    """A waiter with `timeout` queued behind a full limiter of 4; since it was queued the
    backend was seen to take 800 ms (late answers); 0.3 s later a slot frees."""
    flying = fill(h, 4)
    waiter = h.gate.admit(h.ticket(timeout=timeout))
    assert isinstance(waiter, Waiter)
    h.gate.estimates.recent.add(h.clock.now, 0.8)
    h.gate.refresh_estimates(h.clock.now)
    h.clock.advance(0.3)
    h.gate.release(flying[0], ok(0.3))
    return waiter


def test_a_waiter_left_with_less_than_the_expected_latency_is_not_sent() -> None:
    h = Harness()
    short = queued_behind_slow_answers(h, timeout=1.0)  # 700 ms left: not enough
    assert short.state == REFUSED
    result = short.result
    assert isinstance(result, Refusal) and result.reason == "deadline"
    assert result.retry_after_ms > 0  # its return is booked
    assert h.gate.in_flight == 3 and h.gate.queue.total == 0


def test_a_waiter_with_enough_of_its_deadline_left_is_sent() -> None:
    h = Harness()
    long = queued_behind_slow_answers(h, timeout=5.0)
    assert long.state == ADMITTED and h.gate.in_flight == 4
