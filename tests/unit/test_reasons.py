"""The reason table: one enum, one table of statuses, and an answer built for every reason."""

from __future__ import annotations

import orjson
import pytest

from proxy.contracts import REASONS, Reason, Refusal
from proxy.edge.forward import refusal_response
from proxy.ops.metrics import Metrics


def test_every_reason_has_its_statuses_in_the_table_and_the_table_has_no_other() -> None:
    assert set(REASONS) == set(Reason)
    assert all(REASONS[reason] for reason in Reason)  # each may be sent with some status


def test_a_reason_is_its_plain_string_in_text_json_and_lookups() -> None:
    reason = Reason.CALLER_CAP
    assert reason == "caller-cap" and str(reason) == "caller-cap" and f"{reason}" == "caller-cap"
    assert orjson.dumps({"reason": reason}) == b'{"reason":"caller-cap"}'
    assert REASONS["caller-cap"] == REASONS[reason]  # a plain string still finds its entry
    assert Reason("caller-cap") is reason


def test_refusal_metrics_are_labelled_with_the_plain_reason() -> None:
    metrics = Metrics(["orch"])
    metrics.refused[Reason.RETRY_BUDGET].inc()
    labels = {"outcome": "refused", "reason": "retry-budget"}
    assert metrics.registry.get_sample_value("sluice_requests_total", labels) == 1.0
    exposed = {
        sample.labels.get("reason")
        for family in metrics.registry.collect()
        for sample in family.samples
        if "reason" in sample.labels
    }
    assert "retry-budget" in exposed and not any("Reason." in str(r) for r in exposed)


@pytest.mark.parametrize(
    ("reason", "status"),
    sorted((reason, status) for reason, statuses in REASONS.items() for status in statuses),
)
def test_every_reason_in_the_table_is_answered_with_its_header_and_json_body(
    reason: Reason, status: int
) -> None:
    resp = refusal_response(Refusal(reason, status, 1500), "rid-1")
    assert resp.status == status
    assert resp.headers["x-sluice-reason"] == reason.value
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Retry-After"] == "2" and resp.headers["retry-after-ms"] == "1500"
    assert resp.headers["x-request-id"] == "rid-1"
    assert resp.body is not None
    doc = orjson.loads(bytes(resp.body))
    assert doc["reason"] == reason.value and doc["message"]
