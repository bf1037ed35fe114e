"""The metrics operators look for first: upstream answers by status class (counted once per
admitted request, by either gate), the build's version, and the standard process and Python
collectors on Sluice's own registry."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from proxy import __version__
from proxy.admission.passthrough import PassThroughGate
from proxy.contracts import Outcome
from proxy.ops.metrics import STATUS_CLASSES, Metrics

from ._admission import Harness, error, status


def by_class(m: Metrics) -> dict[str, float]:
    return {
        c: m.registry.get_sample_value("sluice_upstream_responses_total", {"status_class": c})
        or 0.0
        for c in STATUS_CLASSES
    }


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (100, "1xx"),
        (200, "2xx"),
        (204, "2xx"),
        (304, "3xx"),
        (404, "4xx"),
        (429, "4xx"),
        (503, "5xx"),
        (599, "5xx"),
        # Outside 100-599 a status is invalid: the backend is broken, as with a 5xx.
        (600, "5xx"),
        (999, "5xx"),
        (99, "5xx"),
    ],
)
def test_each_status_counts_in_its_class(code: int, cls: str) -> None:
    m = Metrics()
    m.upstream_answered(code)
    assert by_class(m) == {c: (1.0 if c == cls else 0.0) for c in STATUS_CLASSES}


def test_every_class_is_exposed_before_any_answer() -> None:
    text = generate_latest(Metrics().registry).decode()
    for c in STATUS_CLASSES:
        assert f'sluice_upstream_responses_total{{status_class="{c}"}} 0.0' in text


def test_the_gate_counts_each_admitted_answer_once() -> None:
    h = Harness()
    tickets = [h.ticket() for _ in range(4)]
    for t in tickets:
        assert h.gate.admit(t) is None
    h.gate.release(tickets[0], status(200))
    h.gate.release(tickets[1], status(503))
    h.gate.release(tickets[1], status(503))  # a second release is ignored
    h.gate.release(tickets[2], status(404))
    h.gate.release(tickets[3], error("connect"))  # no answer: no class
    h.gate.release(h.ticket(), status(200))  # never admitted: not counted
    assert by_class(h.metrics) == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1}


def test_without_protection_answers_are_counted_too() -> None:
    h = Harness({"modes": {"protection": "off"}})
    gate = PassThroughGate(h.config, h.metrics)
    for code in (200, 302, 502):
        t = h.ticket()
        assert gate.admit(t) is None
        gate.release(t, Outcome(code, 0.01))
    t = h.ticket()
    assert gate.admit(t) is None
    gate.release(t, Outcome(None, 0.01, "timeout"))
    assert by_class(h.metrics) == {"1xx": 0, "2xx": 1, "3xx": 1, "4xx": 0, "5xx": 1}


def test_build_info_carries_the_package_version() -> None:
    m = Metrics()
    assert m.registry.get_sample_value("sluice_build_info", {"version": __version__}) == 1.0


def test_process_and_python_collectors_are_on_the_registry() -> None:
    m = Metrics()
    get = m.registry.get_sample_value
    cpu = get("process_cpu_seconds_total")
    assert cpu is not None and cpu > 0  # this process has run
    rss = get("process_resident_memory_bytes")
    assert rss is not None and rss > 0
    assert get("python_gc_collections_total", {"generation": "0"}) is not None
    text = generate_latest(m.registry).decode()
    assert "python_info{" in text
