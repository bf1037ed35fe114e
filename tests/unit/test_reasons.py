"""The reason table: every reason Sluice can answer with has an answer built for it."""

from __future__ import annotations

import orjson
import pytest

from proxy.contracts import REASONS, Refusal
from proxy.forward import refusal_response


@pytest.mark.parametrize(
    ("reason", "status"),
    sorted((reason, status) for reason, statuses in REASONS.items() for status in statuses),
)
def test_every_reason_in_the_table_is_answered_with_its_header_and_json_body(
    reason: str, status: int
) -> None:
    resp = refusal_response(Refusal(reason, status, 1500), "rid-1")
    assert resp.status == status
    assert resp.headers["x-sluice-reason"] == reason
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Retry-After"] == "2" and resp.headers["retry-after-ms"] == "1500"
    assert resp.headers["x-request-id"] == "rid-1"
    assert resp.body is not None
    doc = orjson.loads(bytes(resp.body))
    assert doc["reason"] == reason and doc["message"]
