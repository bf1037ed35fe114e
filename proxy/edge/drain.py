"""The end of a drain: the requests still running at its deadline are cut, answered and logged.

`drain_timeout` is a promise to the orchestrator (Kubernetes kills the pod at its own grace
period), so the drain cannot wait on a backend that holds a request. At the deadline every request
still forwarding (or holding a refusal) has its task cancelled; the request path hands the
cancellation here: a request whose answer has not started gets 503 `draining` with Retry-After
instead of an empty reply; one whose headers went out can only have its connection aborted (a
truncated body must never look complete). Each is logged once, with what its client got.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from aiohttp import web

from ..contracts import Reason, Refusal, Ticket
from ..ops.metrics import Metrics
from .forward import refusal_response

log = logging.getLogger("sluice.drain")

# How often the drain looks whether the requests in flight are done (shutdown only).
POLL = 0.02


class Cutoff:
    """The requests a drain may cut at its deadline (their tasks), and the cut itself.

    The request path adds its task to `running` around the upstream call and a held refusal,
    and on a `CancelledError` while `cutting` asks `answer` (or `held_answer`) what to send.
    """

    __slots__ = ("cutting", "metrics", "running")

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Bounded by the requests in flight and held (the limiter and `queue.max_size`).
        self.running: set[asyncio.Task[Any]] = set()
        self.cutting = False

    def enter(self) -> asyncio.Task[Any]:
        """Register the current request's task (the caller discards it from `running`)."""
        task = asyncio.current_task()
        assert task is not None  # the request path runs in a task of its own
        self.running.add(task)
        return task

    async def wait_idle(self, deadline: float) -> None:
        """Until nothing registered is running, or `deadline` (time.monotonic()) passes."""
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(POLL, left))

    async def cut(self, wait: float) -> int:
        """Cancel every registered request and give their answers `wait` s to be written;
        returns how many were cut."""
        self.cutting = True
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=wait)
        return len(tasks)

    def answer(self, request: web.BaseRequest, ticket: Ticket, retry_after: float) -> web.Response:
        """Called while a forwarded request's `CancelledError` is handled. Not the drain's (its
        client left): raised again. The drain's: 503 `draining` (Retry-After `retry_after` s)
        if nothing of its answer was sent; otherwise its connection is aborted and the
        cancellation goes on."""
        if not self.cutting:
            raise  # the cancellation the caller is handling
        sent = request.writer.output_size
        if sent > 0:
            _log_cut(request, ticket, f"{sent} bytes of the answer, then the connection aborted")
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise
        _uncancel()
        _log_cut(request, ticket, "503 draining")
        self.metrics.refused[Reason.DRAINING].inc()
        resp = refusal_response(
            Refusal(Reason.DRAINING, 503, math.ceil(retry_after * 1000)), ticket.request_id
        )
        resp.force_close()
        return resp

    def held_answer(
        self, request: web.BaseRequest, ticket: Ticket, refusal: Refusal, left: float
    ) -> Refusal:
        """A refusal held at the deadline is sent at once, the `left` s of its hold added to
        its Retry-After (as for a refusal held while draining)."""
        _uncancel()
        ms = refusal.retry_after_ms + math.ceil(max(0.0, left) * 1000.0)
        _log_cut(request, ticket, f"{refusal.status} {refusal.reason.value} (its hold cut short)")
        return Refusal(refusal.reason, refusal.status, ms)


def _uncancel() -> None:
    """The cut's cancellation is answered, not propagated: later awaits must run normally."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()


def _log_cut(request: web.BaseRequest, ticket: Ticket, sent: str) -> None:
    log.warning(
        "request cut off at the drain deadline",
        extra={
            "request_id": ticket.request_id[:64],
            "method": request.method,
            "path": request.path[:200],
            "caller": ticket.caller,
            "ran_ms": round((time.monotonic() - ticket.arrived) * 1000.0, 1),
            "sent": sent,
        },
    )
