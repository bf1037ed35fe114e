"""What the HTTP edge asks the gate (contracts.Gate): the answer to send instead of an
upstream 5xx, and whether the proxy is calm. Both gates, on a fake clock, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.admission.passthrough import PassThroughGate
from proxy.contracts import Reason, Refusal
from proxy.control.modes import Mode
from proxy.ops.metrics import Metrics

from ._admission import Harness, error, make_config


def outage(extra: dict[str, Any] | None = None) -> Harness:
    """A gate that just went to OUTAGE: three connect failures in a row."""
    h = Harness({"modes": {"outage_min_samples": 3}, **(extra or {})})
    tickets = [h.ticket() for _ in range(3)]
    for t in tickets:
        assert h.gate.admit(t) is None
    for t in tickets:
        h.gate.release(t, error("connect"))
    h.gate.evaluate_now(h.clock())  # what the ticker does as soon as the request is done
    assert h.gate.modes.state is Mode.OUTAGE
    return h


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_in_outage_an_upstream_5xx_is_answered_503_outage(status: int) -> None:
    h = outage()
    assert h.gate.upstream_refusal(h.ticket(), status) == Refusal(Reason.OUTAGE, 503, 1000)


def test_the_outage_answer_comes_back_after_the_outage_is_expected_to_end_on_the_gates_clock() -> (
    None
):
    # Expected to stay down as long as it has been down (at most outage_retry_after_max, 4 s),
    # never sooner than retry_after_unbooked (1 s), never later than retry_after_max; the
    # time is the gate's own clock (a fake one here), not the wall's.
    h = outage({"shedding": {"retry_after_max": "3s"}})
    expected = {0.0: 1000, 0.5: 1000, 2.5: 2500, 3.5: 3000, 30.0: 3000}
    down = 0.0
    for age, ms in expected.items():
        h.clock.advance(age - down)
        down = age
        r = h.gate.upstream_refusal(h.ticket(), 500)
        assert r is not None and r.retry_after_ms == ms, age
        assert r.hold == 0.0  # nothing held: the upstream call already took its time


@pytest.mark.parametrize("status", [200, 204, 304, 404, 429, 499])
def test_in_outage_an_upstream_answer_below_500_is_relayed(status: int) -> None:
    h = outage()
    assert h.gate.upstream_refusal(h.ticket(), status) is None


@pytest.mark.parametrize("status", [500, 503])
def test_outside_outage_an_upstream_5xx_is_relayed(status: int) -> None:
    h = Harness()
    assert h.gate.modes.state is Mode.NORMAL
    assert h.gate.upstream_refusal(h.ticket(), status) is None
    h.gate.command("shield", ttl="1m")
    assert h.gate.modes.state is Mode.SHIELD
    assert h.gate.upstream_refusal(h.ticket(), status) is None


def test_a_dry_run_gate_in_outage_relays_the_upstream_5xx() -> None:
    h = outage()
    h.gate.command("dry-run", on=True)
    assert h.gate.modes.state is Mode.OUTAGE  # still down, but dry run changes no answer
    assert h.gate.upstream_refusal(h.ticket(), 500) is None
    h.gate.command("dry-run", on=False)
    assert h.gate.upstream_refusal(h.ticket(), 500) is not None


def test_a_gate_configured_dry_run_relays_the_upstream_5xx_in_outage() -> None:
    h = outage({"modes": {"outage_min_samples": 3, "protection": "dry-run"}})
    assert h.gate.upstream_refusal(h.ticket(), 500) is None


async def test_the_gate_is_calm_only_in_normal_and_not_draining() -> None:
    h = Harness()
    assert h.gate.calm()
    h.gate.command("recovery")
    assert not h.gate.calm()
    h.gate.command("normal")
    assert h.gate.calm()
    await h.gate.drain()
    assert not h.gate.calm()
    assert not outage().gate.calm()


async def test_without_protection_every_answer_is_relayed_and_calm_ends_with_the_drain() -> None:
    config = make_config({"modes": {"protection": "off"}})
    gate = PassThroughGate(config, Metrics(c.name for c in config.callers.known))
    h = Harness()
    for status in (200, 500, 503):
        assert gate.upstream_refusal(h.ticket(), status) is None
    assert gate.calm()
    await gate.drain()
    assert not gate.calm()
