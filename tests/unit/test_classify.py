"""Classifier: caller trust, buckets, priority, retries with and without attempt headers."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.admission.classify import Classifier, parse_nonneg_int
from proxy.admission.retries import SIGNALS, CallIds, FailureCredits, parse_amz_sdk_request
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


def signal_counts(c: Classifier) -> dict[str, int]:
    return dict(zip(SIGNALS, c.retry_signals.counts, strict=True))


def test_attempt_header_wins_over_fingerprint() -> None:
    c = classifier()
    first = classify(c, x_retry_attempt="0")
    c.note_failure(first, 100.1)
    # Its client says first try: the failure on record does not make it a retry.
    assert classify(c, x_retry_attempt="0", now=100.5).is_retry is False
    assert classify(c, x_retry_attempt="1", now=100.6).is_retry is True
    assert signal_counts(c) == {"attempt-header": 1, "call-id": 0, "fingerprint": 0}


def test_aws_sdk_attempt_header() -> None:
    c = classifier()
    first = classify(c, amz_sdk_request="attempt=1; max=3")
    assert (first.attempt, first.is_retry) == (0, False)  # AWS counts the first try as 1
    again = classify(c, amz_sdk_request="attempt=3; max=3", now=101.0)
    assert (again.attempt, again.is_retry) == (2, True)
    assert signal_counts(c)["attempt-header"] == 1


@pytest.mark.parametrize("bad", ["attempt=0; max=3", "max=3", "attempt=x", "attempt=" + "9" * 40])
def test_malformed_aws_sdk_request_ignored_and_counted(bad: str) -> None:
    c = classifier()
    t = classify(c, amz_sdk_request=bad)
    assert (t.attempt, t.is_retry) == (None, False)
    assert c.invalid_headers.count == 1


@pytest.mark.parametrize("header", ["x_ms_client_request_id", "amz_sdk_invocation_id"])
def test_retry_from_per_call_id(header: str) -> None:
    c = classifier()
    first = classify(c, x_caller_id="orch-a", **{header: "call-1"})
    assert (first.attempt, first.is_retry) == (0, False)  # a new call: a first try
    second = classify(c, x_caller_id="orch-a", now=100.5, **{header: "call-1"})
    third = classify(c, x_caller_id="orch-a", now=101.0, **{header: "call-1"})
    assert (second.attempt, second.is_retry) == (1, True)
    assert (third.attempt, third.is_retry) == (2, True)
    # Another call of the same identity (a new id) after a success is a first try.
    other = classify(c, x_caller_id="orch-a", now=101.5, **{header: "call-2"})
    assert other.is_retry is False
    assert signal_counts(c) == {"attempt-header": 0, "call-id": 2, "fingerprint": 0}


def test_call_id_headers_are_configurable() -> None:
    c = classifier(headers={"call_ids": ["x-my-call"]})
    classify(c, x_my_call="a")
    assert classify(c, x_my_call="a", now=100.5).is_retry is True
    classify(c, x_ms_client_request_id="b")
    assert classify(c, x_ms_client_request_id="b", now=100.5).is_retry is False


def test_overlong_call_id_ignored_and_counted() -> None:
    c = classifier()
    long_id = "x" * 129
    classify(c, x_ms_client_request_id=long_id)
    assert classify(c, x_ms_client_request_id=long_id, now=100.5).is_retry is False
    assert c.invalid_headers.count == 2


def test_a_new_call_is_a_first_try_whatever_other_calls_did() -> None:
    # Pods of one identity send the same URL with their own call ids: a pod's failure lets
    # its own call's retry count, not another pod's new call.
    c = classifier()
    pods = [classify(c, x_caller_id="orch-a", x_ms_client_request_id=f"pod-{i}") for i in range(5)]
    assert len({t.call_key for t in pods}) == 5 and all(t.call_key for t in pods)
    for t in pods:
        c.note_failure(t, 100.2)
    new = classify(c, x_caller_id="orch-a", now=101.0, x_ms_client_request_id="pod-9")
    assert (new.attempt, new.is_retry) == (0, False)
    back = classify(c, x_caller_id="orch-a", now=101.0, x_ms_client_request_id="pod-3")
    assert (back.attempt, back.is_retry, back.call_key) == (1, True, pods[3].call_key)
    # Their failures left nothing for header-less requests of the same fingerprint either.
    assert classify(c, x_caller_id="orch-a", now=101.0).is_retry is False
    assert signal_counts(c) == {"attempt-header": 0, "call-id": 1, "fingerprint": 0}


def test_call_key_kept_beside_an_attempt_header() -> None:
    # AWS SDKs send both: the attempt header decides, the call id keys the return slot.
    c = classifier()
    t = classify(c, amz_sdk_request="attempt=2; max=3", amz_sdk_invocation_id="inv-1")
    assert (t.attempt, t.is_retry) == (1, True) and t.call_key != 0


def test_identical_requests_after_success_are_first_tries() -> None:
    # Every pod of one identity sends the same token URL, again and again.
    c = classifier()
    for i in range(50):
        assert classify(c, x_caller_id="orch-a", now=100.0 + i * 0.01).is_retry is False
    assert signal_counts(c)["fingerprint"] == 0


def test_retry_without_headers_from_fingerprint() -> None:
    c = classifier()
    t = classify(c, x_caller_id="orch-a", now=100.0)
    assert t.is_retry is False
    c.note_failure(t, 100.2)
    assert classify(c, x_caller_id="orch-a", now=101.0).is_retry is True
    # one failure, one retry: the next repeat is a first try again
    assert classify(c, x_caller_id="orch-a", now=101.1).is_retry is False
    assert signal_counts(c)["fingerprint"] == 1


def test_one_machines_failure_is_not_anothers_retry() -> None:
    # Pods of one identity (same caller, same URL) on their own addresses.
    c = classifier()
    failed = classify(c, peer="127.1.0.1", x_caller_id="orch-a")
    c.note_failure(failed, 100.1)
    assert classify(c, peer="127.1.0.2", x_caller_id="orch-a", now=101.0).is_retry is False
    assert classify(c, peer="127.1.0.1", x_caller_id="orch-a", now=101.0).is_retry is True


def test_fingerprint_retries_never_exceed_failures() -> None:
    c = classifier()
    pods = [classify(c, x_caller_id="orch-a", now=100.0) for _ in range(10)]
    for t in pods[:3]:
        c.note_failure(t, 100.1)
    again = [classify(c, x_caller_id="orch-a", now=101.0).is_retry for _ in range(10)]
    assert sum(again) == 3
    # a different caller with the same path is not a retry
    t = classify(c, x_caller_id="orch-b", now=101.0)
    c.note_failure(t, 101.0)
    assert classify(c, x_caller_id="orch-a", now=101.5).is_retry is False
    # outside the TTL (30 s default) a failure no longer makes a repeat a retry
    assert classify(c, x_caller_id="orch-b", now=140.0).is_retry is False


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


WALL_MS = 1_700_000_000_000.0  # the wall clock in the request-start tests: Nov 2023


def started(c: Classifier, raw: str, peer: str = TRUSTED, **h: str):  # type: ignore[no-untyped-def]
    headers = {"x-request-start": raw} | {k.replace("_", "-"): v for k, v in h.items()}
    return c.classify(peer, "GET", "/t", headers, 50.0, WALL_MS)


def test_time_waiting_in_the_balancer_counts_against_the_timeout_when_trusted() -> None:
    # The balancer received the request 400 ms before we read it.
    raw = "t=1699999999600000"
    off = started(classifier(), raw, x_request_timeout_ms="1000")
    assert (off.arrived, off.deadline) == (50.0, pytest.approx(51.0))
    c = classifier(trust={"request_start": True})
    t = started(c, raw, x_request_timeout_ms="1000")
    assert t.arrived == pytest.approx(49.6) and t.deadline == pytest.approx(50.6)
    untrusted = started(c, raw, peer=UNTRUSTED, x_request_timeout_ms="1000")
    assert untrusted.deadline == pytest.approx(51.0)


@pytest.mark.parametrize(
    ("raw", "arrived"),
    [
        ("t=1699999999600000", 49.6),  # microseconds (HAProxy's date(0,us))
        ("1699999999600", 49.6),  # milliseconds
        ("t=1699999999.600", 49.6),  # seconds with a fraction (nginx's $msec)
        ("t=1700000000200", 50.0),  # later than our clock (skew): not believed
        ("t=1699999900.0", 50.0),  # 100 s back: past request_start_max, not believed
    ],
)
def test_request_start_units_and_skew(raw: str, arrived: float) -> None:
    c = classifier(trust={"request_start": True})
    assert started(c, raw).arrived == pytest.approx(arrived)
    assert c.invalid_headers.count == 0


@pytest.mark.parametrize("bad", ["", "t=", "nan", "1e9", "t=1.2.3", "-5", "t=٣٣٣"])
def test_unusable_request_start_is_ignored_and_counted(bad: str) -> None:
    c = classifier(trust={"request_start": True})
    assert started(c, bad).arrived == 50.0
    assert c.invalid_headers.count == 1


def test_origin_region_trusted_only_and_local_is_none() -> None:
    assert classify(classifier(), x_origin_region="westus").origin_region == "westus"
    assert classify(classifier(), x_origin_region="eastus").origin_region is None
    assert classify(classifier(), peer=UNTRUSTED, x_origin_region="westus").origin_region is None


def test_request_id_passed_or_generated() -> None:
    assert classify(classifier(), x_request_id="rid-1").request_id == "rid-1"
    assert len(classify(classifier()).request_id) == 32


def test_retry_memories_bounded() -> None:
    ids = CallIds(capacity=3, ttl=10)
    for i in range(10):
        assert ids.sighting(i, 0.0) == 0
    assert len(ids) == 3
    assert ids.sighting(9, 1.0) == 1
    assert ids.sighting(0, 1.0) == 0  # evicted
    credits = FailureCredits(capacity=3, ttl=10)
    for i in range(10):
        credits.failed(i, 0.0)
    assert len(credits) == 3
    assert credits.redeem(9, 1.0) is True
    assert credits.redeem(9, 1.0) is False  # one failure, one redemption
    assert credits.redeem(0, 1.0) is False  # evicted


def test_parse_amz_sdk_request() -> None:
    assert parse_amz_sdk_request("attempt=1; max=3") == 0
    assert parse_amz_sdk_request("max=3;attempt=2") == 1
    assert parse_amz_sdk_request("ttl=20250101T000000Z; attempt=4; max=5") == 3
    assert parse_amz_sdk_request("attempt=0") is None
    assert parse_amz_sdk_request("attempt") is None


def test_parse_nonneg_int() -> None:
    assert parse_nonneg_int("42") == 42
    assert parse_nonneg_int(" 7 ") == 7
    assert parse_nonneg_int(None) is None
    assert parse_nonneg_int("+1") is None


def test_behind_a_trusted_balancer_clients_are_told_apart_by_x_forwarded_for() -> None:
    # Every connection comes from the balancer; the SDK sends no caller header. Without the
    # forwarded address every pod would be one caller, one bucket and one fingerprint.
    c = classifier()
    a = [classify(c, x_forwarded_for=f"10.0.{i}.7") for i in range(64)]
    assert len({t.caller_index for t in a}) == 8  # spread over every bucket
    assert len({t.fingerprint for t in a}) == 64
    same = classify(c, x_forwarded_for="10.0.3.7")
    assert (same.caller, same.fingerprint) == (a[3].caller, a[3].fingerprint)


def test_the_client_is_the_rightmost_untrusted_hop() -> None:
    c = classifier(trust={"sources": ["127.0.0.1/32", "10.9.0.0/16"]})
    direct = classify(c, x_forwarded_for="10.0.0.5")
    # A client that forges hops on the left is still its own rightmost untrusted hop; a
    # trusted proxy on the right (10.9.x) is skipped.
    forged = classify(c, x_forwarded_for="203.0.113.1, 10.0.0.5, 10.9.1.1")
    assert forged.fingerprint == direct.fingerprint
    assert classify(c, x_forwarded_for="203.0.113.1").fingerprint != direct.fingerprint


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    c = classifier()
    a = classify(c, peer=UNTRUSTED, x_forwarded_for="10.0.0.1")
    b = classify(c, peer=UNTRUSTED, x_forwarded_for="10.0.0.2")
    assert (a.caller, a.fingerprint) == (b.caller, b.fingerprint)


def test_forwarded_for_is_bounded() -> None:
    from proxy.headers import TrustedSources

    trusted = TrustedSources(["127.0.0.1/32"])
    long_chain = ", ".join(["127.0.0.1"] * 100 + ["10.0.0.1"])
    assert trusted.client_of("127.0.0.1", long_chain) == "10.0.0.1"
    all_trusted = ", ".join(["198.51.100.1"] + ["127.0.0.1"] * 100)
    assert trusted.client_of("127.0.0.1", all_trusted) == "127.0.0.1"  # never past 8 hops
    assert len(trusted.client_of("127.0.0.1", "x" * 10_000)) == 64
    assert trusted.client_of("127.0.0.1", None) == "127.0.0.1"
