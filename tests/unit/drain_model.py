"""A discrete-event model of the gate in front of a worker-pool backend, on a fake clock.

Clients: fresh traffic (Poisson) plus a backlog released at one instant (or an outage of the
backend while traffic continues), SDK-like: each attempt may time out on the client after
`client_timeout` (the gate is told so only if `timeout_header`), a refusal's Retry-After is
honoured plus a little jitter, other failures back off 0.8 * 2^n s (+-20 %), at most
`retries` retries. The backend: `workers` workers, `service` seconds each (+-`jitter`),
slower by `thrash` x (its queue / workers), a fast 503 past `queue_limit`, fast 500s while
down; work whose client left is still done (wasted). Deterministic for a seed.

It is the harness's scenario in miniature, for fast iteration on the engine (the harness in
`loadtest/` is the benchmark): `python -m tests.unit.drain_model` prints its figures for the
`reopen` and `backend-outage` shapes; `test_drain_sim.py` asserts on a gentler shape.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from proxy.contracts import Outcome, Refusal, Ticket
from proxy.scheduler.waiter import ADMITTED, REFUSED, Waiter

from ._admission import Harness

CALLERS = (
    ("orchestrator-a", 4),
    ("orchestrator-b", 3),
    ("orchestrator-c", 2),
    ("orchestrator-d", 1),
)


@dataclass
class Workflow:
    kind: str  # "backlog" or "fresh"
    caller: str
    fingerprint: int
    born: float
    attempt: int = 0


@dataclass
class Attempt:
    wf: Workflow
    start: float
    ticket: Ticket
    state: str = "sent"  # sent, queued, forwarded, gone (client left), done
    forwarded: float = 0.0
    waiter: Waiter | None = None


@dataclass
class Figures:
    n: int = 0  # backlog workflows (open at the first good probe, for an outage)
    drain: float | None = None  # seconds from the release / first good probe to the last one
    bound: float = 0.0  # 1.2 * n / (C - fresh_rate)
    backlog_failed: int = 0  # workflows that ran out of retries
    fresh_ok: int = 0
    fresh_failed: int = 0
    fresh_p99: float = 0.0
    fresh_p99_before: float = 0.0
    client_timeouts: int = 0
    amplification: float = 0.0  # backend arrivals / first tries
    wasted: float = 0.0  # share of completed work whose client had left
    max_backend_queue: int = 0
    over_limit: int = 0  # admissions that took in-flight past the limit
    refusals: Counter[str] = field(default_factory=Counter)


class _Hook:
    """Stands in for the asyncio future: records that a waiter was resolved."""

    def __init__(self, sink: list[Waiter], w: Waiter) -> None:
        self.sink, self.w, self._done = sink, w, False

    def done(self) -> bool:
        return self._done

    def set_result(self, _: Any) -> None:
        self._done = True
        self.sink.append(self.w)

    def get_loop(self) -> _Immediate:
        return _Immediate()


class _Immediate:
    """Stands in for the event loop: a callback runs at once (no loop in the model)."""

    def call_soon(self, callback: Any) -> None:
        callback()


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[int(q * (len(xs) - 1))]


def run(
    workers: int = 10,
    service: float = 0.05,
    jitter: float = 0.1,
    thrash: float = 0.5,
    queue_limit: int = 1000,
    fresh_rate: float = 120.0,
    backlog: int = 1000,
    client_timeout: float | None = 1.0,
    timeout_header: bool = True,
    retries: int = 5,
    shared_callers: bool = True,
    outage: tuple[float, float] | None = None,
    step: tuple[float, int] | None = None,
    warmup: float = 6.0,
    observe: float = 40.0,
    seed: int = 1,
    config: dict[str, Any] | None = None,
) -> Figures:
    """Run the model; `config` is merged into the gate's config (no capacity stated).
    `step` (at, workers): the backend's workers change at that instant (work already being
    served finishes; a halving's capacity is what its new workers can do)."""
    rnd = random.Random(seed)
    names = [n for n, _ in CALLERS]
    weights = [w for _, w in CALLERS]
    base: dict[str, Any] = {
        "callers": {"known": [{"name": n} for n in [*names, "fresh"]], "fair_buckets": 4},
        "limiter": {"initial": 16, "floor": 4, "ceiling": 1000},
        "modes": {"startup_window": "10s"},
        "shedding": {"retry_after_min": "100ms"},  # the shipped default (the harness sets 1 s)
    }
    h = Harness(base | (config or {}), start=0.0)
    gate = h.gate
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()

    def at(t: float, kind: str, data: Any = None) -> None:
        heapq.heappush(events, (t, next(seq), kind, data))

    fig = Figures()
    busy = 0
    backend: deque[Attempt] = deque()
    resolved: list[Waiter] = []
    by_waiter: dict[int, Attempt] = {}
    done: dict[int, tuple[str, float, float]] = {}  # fingerprint -> (kind, finished, born)
    fresh_lat: list[float] = []
    before_lat: list[float] = []
    first_tries = arrivals = completed = wasted = 0

    def down(t: float) -> bool:
        return outage is not None and outage[0] <= t < outage[1]

    def workflow(kind: str, t: float) -> Workflow:
        caller = rnd.choices(names, weights)[0] if shared_callers or kind == "backlog" else "fresh"
        return Workflow(kind, caller, rnd.getrandbits(62) + 1, t)

    def attempt(wf: Workflow) -> None:
        nonlocal first_tries
        first_tries += wf.attempt == 0
        timeout = client_timeout if timeout_header else None
        t = h.ticket(wf.caller, retry=wf.attempt > 0, timeout=timeout)
        t.fingerprint = wf.fingerprint
        a = Attempt(wf, h.clock.now, t)
        if client_timeout is not None:
            at(h.clock.now + client_timeout, "giveup", a)
        flying = gate.in_flight
        d = gate.admit(t)
        if d is None:
            if gate.in_flight > max(flying, gate.limiter.limit):
                fig.over_limit += 1
            forward(a)
        elif isinstance(d, Waiter):
            a.state, a.waiter = "queued", d
            d.future = _Hook(resolved, d)  # type: ignore[assignment]
            by_waiter[id(d)] = a
        else:
            refused(a, d)

    def retry(wf: Workflow, delay: float) -> None:
        if wf.attempt >= retries:
            if wf.kind == "backlog":
                fig.backlog_failed += 1
            else:
                fig.fresh_failed += 1
            return
        wf.attempt += 1
        at(h.clock.now + delay, "attempt", wf)

    def backoff(wf: Workflow) -> float:
        return 0.8 * 2.0**wf.attempt * rnd.uniform(0.8, 1.2)

    def refused(a: Attempt, d: Refusal) -> None:
        a.state = "done"
        fig.refusals[d.reason] += 1
        # The answer comes after its hold; Retry-After counts from then.
        retry(a.wf, d.hold + d.retry_after_ms / 1000.0 + rnd.uniform(0.0, 0.1))

    def forward(a: Attempt) -> None:
        nonlocal busy, arrivals
        a.state, a.forwarded = "forwarded", h.clock.now
        arrivals += 1
        now = h.clock.now
        if down(now):
            at(now + 0.002, "status", (a, 500))
        elif busy < workers:
            busy += 1
            serve(a)
        elif len(backend) >= queue_limit:
            at(now + 0.001, "status", (a, 503))
        else:
            backend.append(a)
            fig.max_backend_queue = max(fig.max_backend_queue, len(backend))

    def serve(a: Attempt) -> None:
        slower = 1.0 + thrash * len(backend) / workers
        at(h.clock.now + service * slower * rnd.uniform(1 - jitter, 1 + jitter), "done", a)

    def finish(a: Attempt, status: int) -> None:
        if a.state == "gone":
            return
        a.state = "done"
        now = h.clock.now
        gate.release(a.ticket, Outcome(status, now - a.forwarded))
        wf = a.wf
        if status == 200:
            done[wf.fingerprint] = (wf.kind, now, wf.born)
            if wf.kind == "fresh":
                fig.fresh_ok += 1
                (fresh_lat if a.start >= warmup else before_lat).append(now - a.start)
        else:
            retry(wf, backoff(wf))

    t = 0.0
    while t < warmup + observe:
        t += rnd.expovariate(fresh_rate)
        at(t, "attempt", workflow("fresh", t))
    for _ in range(backlog):
        at(warmup, "attempt", workflow("backlog", warmup))
    if step is not None:
        at(step[0], "step", step[1])
    tick = 0.1
    while tick < warmup + observe + 20:
        at(tick, "tick")
        tick += 0.1
    next_probe = 0.0
    first_good: float | None = None

    while events:
        now, _, kind, data = heapq.heappop(events)
        h.clock.now = now
        if kind == "attempt":
            attempt(data)
        elif kind == "tick":
            gate.tick(now)
            if now >= next_probe:
                ok = not down(now)
                gate.on_probe(ok, now)
                if ok and outage is not None and now >= outage[1] and first_good is None:
                    first_good = now
                calm = gate.modes.state.value == "NORMAL" and ok
                next_probe = now + (10.0 if calm else 0.2)
        elif kind == "giveup":
            a = data
            if a.state in ("queued", "forwarded"):
                fig.client_timeouts += 1
                if a.state == "queued":
                    by_waiter.pop(id(a.waiter), None)
                    assert a.waiter is not None
                    a.waiter.cancel()
                    a.state = "done"
                else:
                    gate.release(a.ticket, Outcome(None, now - a.forwarded, "cancelled"))
                    a.state = "gone"
                retry(a.wf, backoff(a.wf))
        elif kind == "done":
            busy -= 1
            completed += 1
            wasted += data.state == "gone"
            if backend and busy < workers:
                busy += 1
                serve(backend.popleft())
            finish(data, 200)
        elif kind == "status":
            a, status = data
            finish(a, status)
        elif kind == "step":
            workers = data
            while backend and busy < workers:
                busy += 1
                serve(backend.popleft())
        while resolved:
            w = resolved.pop()
            a = by_waiter.pop(id(w), None)
            if a is None or a.state != "queued":
                continue
            if w.state == ADMITTED:
                forward(a)
            elif w.state == REFUSED:
                assert w.result is not None
                refused(a, w.result)

    capacity = (workers if step is None else min(workers, step[1])) / service
    if outage is not None:
        t0 = first_good if first_good is not None else outage[1]
        open_then = [v for v in done.values() if v[2] < t0 <= v[1]]
        fig.n = len(open_then)
        last = max((v[1] for v in open_then), default=t0)
    else:
        t0 = warmup
        finished = [v[1] for v in done.values() if v[0] == "backlog"]
        fig.n = backlog
        last = max(finished) if len(finished) == backlog else None  # type: ignore[assignment]
    fig.drain = None if last is None else last - t0
    fig.bound = 1.2 * fig.n / (capacity - fresh_rate)
    fig.fresh_p99 = _quantile(fresh_lat, 0.99)
    fig.fresh_p99_before = _quantile(before_lat, 0.99)
    fig.amplification = arrivals / max(1, first_tries)
    fig.wasted = wasted / max(1, completed)
    return fig


def main() -> None:
    """Print the figures of the harness's two shapes, three seeds each."""
    for name, kw in (("reopen", {}), ("backend-outage", {"backlog": 0, "outage": (6.0, 14.0)})):
        for seed in (1, 2, 3):
            f = run(seed=seed, **kw)  # type: ignore[arg-type]
            drain = "unfinished" if f.drain is None else f"{f.drain:.1f}s"
            print(
                f"{name} seed={seed}: N={f.n} drain={drain} (bound {f.bound:.1f}s) "
                f"failed={f.backlog_failed} fresh={f.fresh_ok}/{f.fresh_ok + f.fresh_failed} "
                f"p99={f.fresh_p99 * 1000:.0f}ms (before {f.fresh_p99_before * 1000:.0f}ms) "
                f"client-timeouts={f.client_timeouts} amplification={f.amplification:.2f} "
                f"wasted={f.wasted:.2%} backend-queue<={f.max_backend_queue}"
            )


if __name__ == "__main__":
    main()
