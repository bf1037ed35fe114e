"""Classifier: caller trust, buckets, priority, retries with and without attempt headers."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.classify import Classifier, RecentRequests, parse_nonneg_int
from proxy.config import load_config_data

TRUSTED = "127.0.0.1"
UNTRUSTED = "198.51.100.9"


def classifier(**sections: Any) -> Classifier:
    data: dict[str, Any] = {
        "upstream": {"url": "http://127.0.0.1:8081"},
        "callers": {"known": [{"name": "orch-a", "priority": "high"}], "fair_buckets": 8},
        "region": {"name": "eastus"},
    }
    data.update(sections)
    return Classifier(load_config_data(data))


def classify(c: Classifier, peer: str = TRUSTED, now: float = 100.0, path: str = "/t", **h: str):  # type: ignore[no-untyped-def]
    headers = {k.replace("_", "-"): v for k, v in h.items()}
    return c.classify(peer, "GET", path, headers, now, 1_000_000.0)


def test_configured_caller_from_trusted_peer() -> None:
    t = classify(classifier(), x_caller_id="orch-a")
    assert (t.caller, t.caller_label, t.caller_index) == ("orch-a", "orch-a", 0)
    assert t.priority == 1  # "high"


def test_caller_id_from_untrusted_peer_ignored() -> None:
    c = classifier()
    t = classify(c, peer=UNTRUSTED, x_caller_id="orch-a", x_priority="critical")
    assert t.caller.startswith("bucket-")
    assert t.caller_label == "other"
    assert t.priority == 2  # "normal": the priority header is not believed either
    # identified by its address instead: same peer, same bucket
    assert classify(c, peer=UNTRUSTED).caller == t.caller


def test_unknown_callers_fold_into_bounded_buckets() -> None:
    c = classifier()
    indexes = {classify(c, x_caller_id=f"caller-{i}").caller_index for i in range(500)}
    assert indexes <= set(range(1, 1 + 8))
    assert len(indexes) == 8  # crc32 spreads 500 names over all buckets
    assert c.caller_slots == 9


def test_priority_header_from_trusted_peer() -> None:
    assert classify(classifier(), x_priority="LOW").priority == 3
    assert classify(classifier(), x_priority="bogus").priority == 2


def test_retry_from_attempt_header() -> None:
    c = classifier()
    assert classify(c, x_retry_attempt="0").is_retry is False
    assert classify(c, x_retry_attempt="2", path="/other").is_retry is True
    t = classify(c, x_envoy_attempt_count="1", path="/e")
    assert (t.attempt, t.is_retry) == (0, False)  # Envoy counts the first try as 1
    assert classify(c, grpc_previous_rpc_attempts="1", path="/g").is_retry is True


def test_attempt_header_wins_over_fingerprint() -> None:
    c = classifier()
    classify(c, x_retry_attempt="0")
    assert classify(c, x_retry_attempt="0", now=100.5).is_retry is False


def test_retry_without_headers_from_fingerprint() -> None:
    c = classifier()
    assert classify(c, x_caller_id="orch-a", now=100.0).is_retry is False
    assert classify(c, x_caller_id="orch-a", now=101.0).is_retry is True
    # a different caller with the same path is not a retry
    assert classify(c, x_caller_id="orch-b", now=101.0).is_retry is False
    # outside the TTL (30 s default) the same request is a new first try
    assert classify(c, x_caller_id="orch-a", now=140.0).is_retry is False


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", "", "99999999999999999", "٣"])
def test_invalid_attempt_headers_treated_as_absent_and_counted(bad: str) -> None:
    c = classifier()
    t = classify(c, x_retry_attempt=bad)
    assert t.attempt is None
    assert c.invalid_headers.count == 1


def test_deadline_from_timeout_header() -> None:
    t = classify(classifier(), now=50.0, x_request_timeout_ms="1500")
    assert t.deadline == pytest.approx(51.5)


def test_absolute_deadline_only_when_configured() -> None:
    h = {"x_request_deadline_ms": "1002000"}  # wall clock is 1_000_000 ms: 2 s away
    assert classify(classifier(), now=10.0, **h).deadline is None
    c = classifier(trust={"absolute_deadline": True})
    assert classify(c, now=10.0, **h).deadline == pytest.approx(12.0)


def test_origin_region_trusted_only_and_local_is_none() -> None:
    assert classify(classifier(), x_origin_region="westus").origin_region == "westus"
    assert classify(classifier(), x_origin_region="eastus").origin_region is None
    assert classify(classifier(), peer=UNTRUSTED, x_origin_region="westus").origin_region is None


def test_request_id_passed_or_generated() -> None:
    assert classify(classifier(), x_request_id="rid-1").request_id == "rid-1"
    assert len(classify(classifier()).request_id) == 32


def test_recent_requests_bounded() -> None:
    r = RecentRequests(capacity=3, ttl=10)
    for i in range(10):
        r.check_and_add(i, 0.0)
    assert len(r) == 3
    assert r.check_and_add(9, 1.0) is True
    assert r.check_and_add(0, 1.0) is False  # evicted


def test_parse_nonneg_int() -> None:
    assert parse_nonneg_int("42") == 42
    assert parse_nonneg_int(" 7 ") == 7
    assert parse_nonneg_int(None) is None
    assert parse_nonneg_int("+1") is None
