"""Helpers for the admission-engine unit tests: a fake clock, configs, tickets, outcomes."""

from __future__ import annotations

import itertools
from typing import Any

from proxy.admission.classify import Classifier
from proxy.admission.gate import AdmissionGate
from proxy.config import PRIORITY_CLASSES, Config, load_config_data
from proxy.contracts import Outcome, Ticket
from proxy.ops.metrics import Metrics
from proxy.scheduler.waiter import ADMITTED, WAITING, Waiter

NORMAL_PRIORITY = PRIORITY_CLASSES.index("normal")
_ids = itertools.count()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into a copy of `base`."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(extra: dict[str, Any] | None = None) -> Config:
    """A valid config with test-friendly defaults, deep-merged with `extra`."""
    base: dict[str, Any] = {
        "upstream": {"url": "http://127.0.0.1:9"},
        "callers": {
            "known": [
                {"name": "orch", "weight": 1},
                {"name": "fresh", "weight": 1},
                {"name": "repair", "weight": 1},
                {"name": "banned", "cap": 0},
                {"name": "capped", "cap": 2},
            ],
            "fair_buckets": 4,
        },
        "limiter": {"initial": 4, "floor": 2, "ceiling": 64},
        "modes": {"startup_window": "0s"},
        # Returns at least a second out: the tests reason about holds and slots on that
        # scale (the default, 100 ms, has its own tests in test_gate_pace.py).
        "shedding": {"retry_after_min": "1s"},
    }
    return load_config_data(merge(base, extra or {}))


class Harness:
    """An AdmissionGate on a fake clock, with ticket and outcome factories."""

    def __init__(self, extra: dict[str, Any] | None = None, start: float = 1000.0) -> None:
        self.clock = FakeClock(start)
        self.config = make_config(extra)
        self.classifier = Classifier(self.config)
        self.names = self.classifier.caller_names()
        self.metrics = Metrics(c.name for c in self.config.callers.known)
        self.gate = AdmissionGate(self.config, self.metrics, self.names, clock=self.clock)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def ticket(
        self,
        caller: str = "orch",
        *,
        retry: bool = False,
        origin: str | None = None,
        timeout: float | None = None,
        priority: int = NORMAL_PRIORITY,
    ) -> Ticket:
        now = self.clock.now
        known = {c.name for c in self.config.callers.known}
        return Ticket(
            caller=caller,
            caller_label=caller if caller in known else "other",
            caller_index=self.index(caller),
            priority=priority,
            attempt=None,
            is_retry=retry,
            origin_region=origin,
            arrived=now,
            deadline=None if timeout is None else now + timeout,
            request_id=f"r{next(_ids)}",
        )

    def tick(self, dt: float = 0.1) -> None:
        self.gate.tick(self.clock.advance(dt))

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


def ok(latency: float = 0.01) -> Outcome:
    return Outcome(200, latency)


def status(code: int, latency: float = 0.01) -> Outcome:
    return Outcome(code, latency)


def error(kind: str, latency: float = 0.001) -> Outcome:
    return Outcome(None, latency, kind)


def saturate(
    h: Harness, per_tick: int, ticks: int = 16, dt: float = 0.1
) -> tuple[list[Ticket], list[Waiter]]:
    """Drive `h`'s gate as a backend that finishes `per_tick` requests every `dt` while its
    limit is full and work waits: the oldest in flight finish (in `limit / per_tick` ticks,
    the latency reported), new arrivals refill the limit, and one more always waits.
    Goodput is `per_tick / dt`, which is what the gate can learn as the backend's pace (with
    a limit pinned by floor = initial = ceiling, and no mode change meanwhile). Returns the
    tickets still in flight (oldest first) and the waiter still waiting."""
    gate = h.gate
    limit = gate.limiter.limit
    latency = limit / per_tick * dt
    flying: list[Ticket] = []
    waiting: list[Waiter] = []
    for _ in range(ticks):
        done, flying = flying[:per_tick], flying[per_tick:]
        for t in done:
            gate.release(t, ok(latency))
        for w in [w for w in waiting if w.state != WAITING]:
            assert w.state == ADMITTED, w.result  # served in the freed slot, never refused
            waiting.remove(w)
            flying.append(w.ticket)
        while gate.in_flight < limit:
            t = h.ticket()
            assert gate.admit(t) is None
            flying.append(t)
        if not waiting:
            w = gate.admit(h.ticket())
            assert isinstance(w, Waiter), w
            waiting.append(w)
        h.tick(dt)
    return flying, waiting
