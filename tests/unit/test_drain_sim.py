"""End-to-end dynamics on a fake clock: the gate in front of a simulated worker-pool backend,
a blocked backlog released at once on top of fresh traffic, SDK-like clients that honour
Retry-After. Deterministic (seeded), no sockets, no sleeping: simulated time only.

This is not the harness's benchmark (that runs real processes); it guards the mechanisms the
benchmark depends on: the limit found without being told the capacity, the backend's own queue
kept within one round of its workers, the backlog paced back and drained near N / (C - fresh),
fresh traffic kept whole, the limit never exceeded.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.contracts import Outcome, Refusal, Ticket
from proxy.gate import ADMITTED, REFUSED, Waiter

from ._admission import Harness


@dataclass
class Request:
    kind: str  # "backlog" or "fresh"
    caller: str
    fingerprint: int
    born: float
    attempt: int = 0
    ticket: Ticket | None = None
    sent: float = 0.0


@dataclass
class Result:
    drained_at: list[float] = field(default_factory=list)  # backlog completion times
    fresh_ok: int = 0
    fresh_failed: int = 0
    max_backend_queue: int = 0
    over_limit: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


class _Hook:
    """Stands in for the asyncio future: records that a waiter was resolved."""

    def __init__(self, sink: list[Waiter], w: Waiter) -> None:
        self.sink, self.w, self._done = sink, w, False

    def done(self) -> bool:
        return self._done

    def set_result(self, _: Any) -> None:
        self._done = True
        self.sink.append(self.w)


def simulate(
    workers: int,
    service: float = 0.05,
    backlog: int = 3000,
    fresh_rate: float = 100.0,
    warmup: float = 20.0,
    horizon: float = 60.0,
    seed: int = 7,
) -> Result:
    rnd = random.Random(seed)
    h = Harness(
        {
            "callers": {"known": [{"name": "orch"}, {"name": "fresh"}], "fair_buckets": 4},
            # The shipped defaults: no capacity stated anywhere.
            "limiter": {"initial": 16, "floor": 4, "ceiling": 1000},
            "modes": {"startup_window": "10s"},
        },
        start=0.0,
    )
    gate = h.gate
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()

    def at(t: float, kind: str, data: Any = None) -> None:
        heapq.heappush(events, (t, next(seq), kind, data))

    out = Result()
    busy = 0
    backend: deque[Request] = deque()
    resolved: list[Waiter] = []
    pending: dict[int, Request] = {}

    def send(r: Request) -> None:
        t = h.ticket(r.caller, retry=r.attempt > 0, timeout=2.0 if r.kind == "fresh" else None)
        t.fingerprint = r.fingerprint
        r.ticket = t
        before = gate.in_flight
        d = gate.admit(t)
        if d is None:
            if gate.in_flight > max(before, gate.limiter.limit):
                out.over_limit += 1
            forward(r)
        elif isinstance(d, Waiter):
            d.future = _Hook(resolved, d)  # type: ignore[assignment]
            pending[id(d)] = r
        else:
            refused(r, d)

    def refused(r: Request, d: Refusal) -> None:
        out.refusals[d.reason] = out.refusals.get(d.reason, 0) + 1
        if r.kind == "fresh":
            out.fresh_failed += 1
            return
        r.attempt += 1
        at(h.clock.now + d.retry_after_ms / 1000.0, "send", r)

    def forward(r: Request) -> None:
        nonlocal busy
        r.sent = h.clock.now
        if busy < workers:
            busy += 1
            at(h.clock.now + service * rnd.uniform(0.8, 1.2), "done", r)
        else:
            backend.append(r)
            out.max_backend_queue = max(out.max_backend_queue, len(backend))

    t = 0.0
    while t < warmup + horizon:
        t += rnd.expovariate(fresh_rate)
        at(t, "send", Request("fresh", "fresh", rnd.getrandbits(62) + 1, t))
    for _ in range(backlog):
        at(warmup, "send", Request("backlog", "orch", rnd.getrandbits(62) + 1, warmup))
    tick = 0.1
    while tick < warmup + horizon:
        at(tick, "tick")
        tick += 0.1

    while events:
        now, _, kind, data = heapq.heappop(events)
        h.clock.now = now
        if kind == "send":
            send(data)
        elif kind == "tick":
            gate.tick(now)
        elif kind == "done":
            busy -= 1
            if backend:
                busy += 1
                at(now + service * rnd.uniform(0.8, 1.2), "done", backend.popleft())
            r = data
            assert r.ticket is not None
            gate.release(r.ticket, Outcome(200, now - r.sent))
            if r.kind == "backlog":
                out.drained_at.append(now - warmup)
            else:
                out.fresh_ok += 1
        while resolved:
            w = resolved.pop()
            r = pending.pop(id(w))
            if w.state == ADMITTED:
                forward(r)
            elif w.state == REFUSED:
                assert w.result is not None
                refused(r, w.result)
    assert gate.in_flight == 0
    return out


@pytest.mark.parametrize("workers", [20, 40])
def test_backlog_drains_at_the_learned_pace_without_thrashing(workers: int) -> None:
    service, backlog, fresh_rate = 0.05, 3000, 100.0
    res = simulate(workers, service, backlog, fresh_rate)
    ideal = backlog / (workers / service - fresh_rate)
    done = sorted(res.drained_at)
    assert len(done) == backlog  # every backlog request succeeded in the end
    assert done[int(0.95 * backlog)] <= 1.2 * ideal  # DESIGN.md §6's figure, for the bulk
    assert done[-1] <= 1.35 * ideal  # and the last ones not long after
    assert res.max_backend_queue <= workers  # within one round of its workers
    assert res.fresh_ok / (res.fresh_ok + res.fresh_failed) >= 0.995
    assert res.over_limit == 0
    assert set(res.refusals) <= {"overload", "retry-budget", "deadline"}
