"""The access log's lines and the upstream failure log's, field by field, and which answers
are sampled, which paced by `logging.lines_per_s` (the budget itself: test_line_budget.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.config import LoggingConfig
from proxy.contracts import Outcome, Reason, Refusal, Ticket
from proxy.edge.accesslog import (
    MAX_ID,
    MAX_PATH,
    AccessLog,
    RelayedStream,
    UpstreamFailureLog,
    access_fields,
    body_bytes,
    bounded_path,
    failure_fields,
    peer_host,
    trace_id,
)
from proxy.edge.forward import refusal_response
from proxy.logs import JsonFormatter
from proxy.upstream.base import UpstreamConnectError, UpstreamResetError

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def ticket(arrived: float = 100.0, request_id: str = "rid-1") -> Ticket:
    return Ticket(
        caller="orch",
        caller_label="orch",
        caller_index=0,
        priority=1,
        attempt=None,
        is_retry=True,
        origin_region=None,
        arrived=arrived,
        deadline=None,
        request_id=request_id,
    )


def formatted(fields: dict[str, Any], msg: str = "answer") -> dict[str, Any]:
    """The JSON line a real logger writes for `fields` (a field named like a LogRecord
    attribute would raise here, as it does in production)."""
    record = logging.getLogger("sluice.test").makeRecord(
        "sluice.test", logging.INFO, __file__, 1, msg, (), None, extra=fields
    )
    doc: dict[str, Any] = orjson.loads(JsonFormatter().format(record))
    return doc


# --- trace ids, paths, peers, bytes ----------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "want"),
    [
        (TRACEPARENT, TRACE),
        (f"01-{TRACE}-00f067aa0ba902b7-01-future-fields", TRACE),  # a later version: more fields
        (None, None),
        ("", None),
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 has four fields
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # uppercase hex
        (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),  # a digit short
        (f"00-{TRACE}x-00f067aa0ba902b7-01", None),
        ("00-" + "a" * 5000, None),  # long garbage
    ],
)
def test_trace_id_is_taken_only_from_a_valid_traceparent(
    header: str | None, want: str | None
) -> None:
    assert trace_id(header) == want


def test_the_path_loses_its_query_and_is_cut() -> None:
    assert bounded_path("/msi/token?resource=x&secret=y") == "/msi/token"
    assert bounded_path("/" + "a" * 5000) == "/" + "a" * (MAX_PATH - 1)


def test_peer_host_is_the_address_part() -> None:
    assert peer_host(("10.0.0.7", 51234)) == "10.0.0.7"
    assert peer_host(("::1", 5, 0, 0)) == "::1"
    assert peer_host(None) == "unknown"


def test_body_bytes_counts_the_body_only() -> None:
    assert body_bytes(web.Response(body=b"x" * 42), "GET") == 42
    assert body_bytes(web.Response(body=b"x" * 42), "HEAD") == 0
    stream = RelayedStream()
    stream.body_sent = 1_000_000
    assert body_bytes(stream, "GET") == 1_000_000
    assert body_bytes(web.StreamResponse(), "GET") == 0


# --- the access line ---------------------------------------------------------------------------
def test_a_refusal_s_line_has_every_field() -> None:
    request = make_mocked_request(
        "GET", "/metadata/identity/oauth2/token?api-version=1", headers={"traceparent": TRACEPARENT}
    )
    resp = refusal_response(Refusal(Reason.SHIELD, 503, 2000), "rid-1")
    fields = access_fields(request, "10.1.2.3", resp, ticket(100.0), None, 0.25, "SHIELD", 100.5)
    assert formatted(fields) | {"ts": None} == {
        "ts": None,
        "level": "info",
        "logger": "sluice.test",
        "msg": "answer",
        "peer": "10.1.2.3",
        "method": "GET",
        "path": "/metadata/identity/oauth2/token",
        "status": 503,
        "reason": "shield",
        "mode": "SHIELD",
        "caller": "orch",
        "retry": True,
        "queue_ms": 250.0,
        "upstream_ms": None,
        "upstream_error": None,
        "total_ms": 500.0,
        "bytes": len(resp.body),
        "request_id": "rid-1",
        "trace_id": TRACE,
    }


def test_a_forwarded_answer_s_line_has_its_upstream_time_and_no_reason() -> None:
    request = make_mocked_request("POST", "/token")
    resp = web.Response(status=200, body=b"{}")
    outcome = Outcome(200, 0.0123)
    fields = access_fields(request, "::1", resp, ticket(), outcome, 0.0, "NORMAL", 100.02)
    assert fields["reason"] is None
    assert fields["status"] == 200
    assert fields["upstream_ms"] == 12.3
    assert fields["upstream_error"] is None
    assert fields["bytes"] == 2
    assert fields["trace_id"] is None


def test_an_aborted_relay_names_the_upstream_error() -> None:
    stream = RelayedStream(status=200)
    stream.body_sent = 10_000
    outcome = Outcome(200, 0.01, "reset")
    fields = access_fields(
        make_mocked_request("GET", "/big"), "::1", stream, ticket(), outcome, 0.0, "NORMAL", 101.0
    )
    assert (fields["upstream_error"], fields["bytes"]) == ("reset", 10_000)


def test_a_guard_answer_s_line_has_no_request_fields_but_its_request_id() -> None:
    resp = refusal_response(Refusal(Reason.BAD_REQUEST, 400, 0), "generated-id")
    fields = access_fields(None, "10.0.0.9", resp, None, None, None, "NORMAL", 5.0)
    assert fields["method"] is fields["path"] is fields["caller"] is fields["total_ms"] is None
    assert (fields["status"], fields["reason"], fields["request_id"]) == (
        400,
        "bad-request",
        "generated-id",
    )


def test_a_client_s_long_request_id_is_cut() -> None:
    resp = refusal_response(Refusal(Reason.OVERLOAD, 503, 1000), "r" * 5000)
    fields = access_fields(None, "p", resp, ticket(request_id="r" * 5000), None, 0.0, "NORMAL", 1.0)
    assert fields["request_id"] == "r" * MAX_ID


# --- which answers are logged ----------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def access_log(**settings: Any) -> tuple[AccessLog, Clock]:
    cfg = LoggingConfig(**settings)
    clock = Clock()
    return AccessLog(lambda: cfg, lambda: "NORMAL", clock), clock


def lines(caplog: pytest.LogCaptureFixture, msg: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == msg]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sluice")
    return caplog


async def test_own_answers_are_logged_every_one_up_to_the_budget_then_counted(
    logs: pytest.LogCaptureFixture,
) -> None:
    log, _ = access_log(lines_per_s=10, access_log_sample=0.0)
    request = make_mocked_request("GET", "/t")
    for reason in [Reason.SHIELD] * 25 + [Reason.OVERLOAD] * 5:
        log.answer(request, "p", refusal_response(Refusal(reason, 503, 0), "r"), ticket())
    assert len(lines(logs, "answer")) == 10
    log.lines.flush()  # what the timer does a second after the first line left out
    [summary] = lines(logs, "lines suppressed")
    assert vars(summary)["suppressed"] == 20
    assert vars(summary)["by_reason"] == {"shield": 15, "overload": 5}


async def test_the_count_of_lines_left_out_is_logged_by_a_timer(
    logs: pytest.LogCaptureFixture,
) -> None:
    log, _ = access_log(lines_per_s=1)
    log.lines.every = 0.01
    answer = refusal_response(Refusal(Reason.BUSY, 503, 0), "r")
    for _ in range(3):
        log.answer(None, "p", answer)
    for _ in range(500):
        if lines(logs, "lines suppressed"):
            break
        await asyncio.sleep(0.01)
    [summary] = lines(logs, "lines suppressed")
    assert vars(summary)["by_reason"] == {"busy": 2}


def test_forwarded_successes_are_sampled_not_paced(logs: pytest.LogCaptureFixture) -> None:
    request = make_mocked_request("GET", "/t")
    never, _ = access_log(lines_per_s=1000, access_log_sample=0.0)
    always, _ = access_log(lines_per_s=0, access_log_sample=1.0)
    for _ in range(20):
        never.answer(request, "p", web.Response(body=b""), ticket(), Outcome(200, 0.01), 0.0)
        always.answer(request, "p", web.Response(body=b""), ticket(), Outcome(404, 0.01), 0.0)
    assert len(lines(logs, "answer")) == 20  # all of `always`'s, none of `never`'s
    assert always.lines.budget.suppressed == 0


async def test_forwarded_errors_are_paced_whatever_the_sample(
    logs: pytest.LogCaptureFixture,
) -> None:
    log, clock = access_log(lines_per_s=2, access_log_sample=0.0)
    request = make_mocked_request("GET", "/t")
    for status in (500, 503, 429, 502):
        log.answer(request, "p", web.Response(status=status), ticket(), Outcome(status, 0.01))
    assert [vars(r)["status"] for r in lines(logs, "answer")] == [500, 503]
    clock.now += 1.0  # the budget refills
    log.answer(request, "p", web.Response(status=504), ticket(), Outcome(None, 5.0, "timeout"))
    assert len(lines(logs, "answer")) == 3
    log.lines.flush()
    [summary] = lines(logs, "lines suppressed")
    assert vars(summary)["by_reason"] == {"forwarded": 2}


def test_nothing_is_logged_with_the_access_log_off(logs: pytest.LogCaptureFixture) -> None:
    log, _ = access_log(access_log=False, access_log_sample=1.0)
    log.answer(None, "p", refusal_response(Refusal(Reason.SHIELD, 503, 0), "r"))
    log.answer(None, "p", web.Response(), ticket(), Outcome(200, 0.01), 0.0)
    assert not lines(logs, "answer")
    assert log.lines.budget.suppressed == 0


# --- upstream failures -----------------------------------------------------------------------
def connect_failure() -> UpstreamConnectError:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from None
    except UpstreamConnectError as failure:
        return failure


def test_a_failure_line_names_the_error_and_its_cause() -> None:
    exc = connect_failure()
    doc = formatted(failure_fields(exc, "rid-9", "request"), "upstream failed")
    assert doc["kind"] == "connect"
    assert doc["stage"] == "request"
    assert doc["error"] == "UpstreamConnectError"
    assert doc["cause"] == "ConnectionRefusedError"
    assert "Connection refused" in doc["detail"]
    assert doc["request_id"] == "rid-9"


def test_a_failure_without_a_cause_and_a_long_message() -> None:
    fields = failure_fields(UpstreamResetError("x" * 10_000), None, "body")
    assert fields["cause"] is None
    assert fields["request_id"] is None
    assert len(fields["detail"]) == 300


async def test_upstream_failures_are_paced_by_kind(logs: pytest.LogCaptureFixture) -> None:
    cfg = LoggingConfig(lines_per_s=3)
    failures = UpstreamFailureLog(lambda: cfg, Clock())
    for _ in range(5):
        failures.failed(connect_failure(), "r", "request")
    failures.failed(UpstreamResetError("reset"), "r", "body")
    written = lines(logs, "upstream failed")
    assert len(written) == 3
    assert all(r.levelno == logging.WARNING for r in written)
    failures.lines.flush()
    [summary] = lines(logs, "lines suppressed")
    assert vars(summary)["by_reason"] == {"connect": 2, "reset": 1}
