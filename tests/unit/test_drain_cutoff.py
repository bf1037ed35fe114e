"""The drain's deadline (proxy.edge.drain.Cutoff): what a request cut at the deadline gets (its
answer not begun, begun, or a held refusal), that a client's own departure is not mistaken for a
cut, and that the drain waits no longer than its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.contracts import Reason, Refusal, Ticket
from proxy.edge.drain import Cutoff
from proxy.ops.metrics import Metrics


def ticket(request_id: str = "rid-1") -> Ticket:
    return Ticket(
        caller="orch",
        caller_label="other",
        caller_index=0,
        priority=2,
        attempt=0,
        is_retry=False,
        origin_region=None,
        arrived=time.monotonic(),
        deadline=None,
        request_id=request_id,
    )


def request(sent: int = 0) -> tuple[web.BaseRequest, mock.Mock]:
    """A request whose answer has `sent` bytes written already, and its transport."""
    writer = mock.Mock()
    writer.output_size = sent
    transport = mock.Mock()
    return make_mocked_request("GET", "/token?x=1", writer=writer, transport=transport), transport


def draining_refusals(metrics: Metrics) -> float:
    """`sluice_requests_total{outcome="refused", reason="draining"}`, summed over any other
    label."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "sluice_requests_total"
        and sample.labels.get("outcome") == "refused"
        and sample.labels.get("reason") == Reason.DRAINING.value
    )


async def forward_like(cutoff: Cutoff, req: web.BaseRequest, started: asyncio.Event) -> Any:
    """What the request path does around the upstream call (proxy.edge.app.Sluice.handle)."""
    task = cutoff.enter()
    try:
        started.set()
        await asyncio.sleep(3600)  # a backend that never answers
    except asyncio.CancelledError:
        resp = cutoff.answer(req, ticket(), 1.0)
        # The answer is written after this, perhaps under a timeout: the task must not look
        # as if it were still being cancelled.
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return resp
    finally:
        cutoff.running.discard(task)


async def start(cutoff: Cutoff, req: web.BaseRequest) -> asyncio.Task[Any]:
    started = asyncio.Event()
    task = asyncio.create_task(forward_like(cutoff, req, started))
    await started.wait()
    return task


async def test_a_request_cut_before_its_answer_began_gets_503_draining_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics([])
    cutoff = Cutoff(metrics)
    req, transport = request(sent=0)
    task = await start(cutoff, req)
    with caplog.at_level(logging.WARNING, logger="sluice.drain"):
        assert await cutoff.cut(wait=5.0) == 1
    resp = task.result()
    assert resp.status == 503
    assert resp.headers["x-sluice-reason"] == "draining"
    assert resp.headers["Retry-After"] == "1"
    assert resp.keep_alive is False  # `Connection: close`
    assert draining_refusals(metrics) == 1.0
    transport.abort.assert_not_called()
    [line] = [r for r in caplog.records if r.name == "sluice.drain"]
    assert line.request_id == "rid-1"  # type: ignore[attr-defined]
    assert line.sent == "503 draining"  # type: ignore[attr-defined]
    assert line.ran_ms >= 0  # type: ignore[attr-defined]
    assert not cutoff.running


async def test_a_request_cut_after_its_headers_went_out_has_its_connection_aborted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics([])
    cutoff = Cutoff(metrics)
    req, transport = request(sent=4096)
    task = await start(cutoff, req)
    with caplog.at_level(logging.WARNING, logger="sluice.drain"):
        await cutoff.cut(wait=5.0)
    assert task.cancelled()  # nothing more can be said: the cancellation goes on
    transport.abort.assert_called_once()
    assert draining_refusals(metrics) == 0.0
    [line] = [r for r in caplog.records if r.name == "sluice.drain"]
    assert "4096 bytes" in line.sent  # type: ignore[attr-defined]


async def test_a_client_that_leaves_is_not_answered_as_cut() -> None:
    cutoff = Cutoff(Metrics([]))
    req, transport = request()
    task = await start(cutoff, req)
    task.cancel()  # what aiohttp does when the client disconnects
    await asyncio.wait([task])
    assert task.cancelled()
    transport.abort.assert_not_called()
    assert not cutoff.running


async def test_a_held_refusal_cut_short_is_sent_with_the_rest_of_its_hold_in_retry_after() -> None:
    cutoff = Cutoff(Metrics([]))
    req, _ = request()
    refusal = Refusal(Reason.OVERLOAD, 503, 2000, hold=30.0)

    async def hold() -> Refusal:
        task = cutoff.enter()
        try:
            await asyncio.sleep(30.0)
        except asyncio.CancelledError:
            answer = cutoff.held_answer(req, ticket(), refusal, 12.5)
            current = asyncio.current_task()
            assert current is not None and current.cancelling() == 0
            return answer
        finally:
            cutoff.running.discard(task)
        return refusal

    task = asyncio.create_task(hold())
    await asyncio.sleep(0)
    await cutoff.cut(wait=5.0)
    assert task.result() == Refusal(Reason.OVERLOAD, 503, 2000 + 12500)


async def test_wait_idle_returns_once_nothing_runs_or_at_the_deadline() -> None:
    cutoff = Cutoff(Metrics([]))
    await cutoff.wait_idle(time.monotonic() + 3600)  # nothing registered: at once
    req, _ = request()
    task = await start(cutoff, req)
    await cutoff.wait_idle(time.monotonic())  # a deadline already passed: at once
    assert cutoff.running
    task.cancel()
    await cutoff.wait_idle(time.monotonic() + 3600)
    assert not cutoff.running
