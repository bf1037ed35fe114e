"""Property test: random interleavings of admit / release / cancel / tick / probe / operator
commands keep the gate's books straight (in-flight within the limit, queue within its bound)
and everything returns to zero at the end."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from proxy.admission.callers import NO_CAP
from proxy.contracts import REASONS, Outcome, Refusal, Ticket
from proxy.control.modes import Mode
from proxy.scheduler.waiter import ADMITTED, REFUSED, WAITING, Waiter

from ._admission import Harness

CALLERS = ["orch", "fresh", "repair", "banned", "capped", "bucket-0", "bucket-3"]
OUTCOMES = [
    Outcome(200, 0.02),
    Outcome(200, 0.3),
    Outcome(503, 0.01),
    Outcome(500, 0.001),
    Outcome(None, 0.001, "connect"),
    Outcome(None, 1.0, "timeout"),
    Outcome(None, 0.5, "cancelled"),
]
MAX_QUEUE = 6


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(
            {
                "limiter": {"initial": 4, "floor": 2, "ceiling": 8, "window": "200ms"},
                "queue": {"max_size": MAX_QUEUE, "max_wait": "1s", "normal_max_wait": "300ms"},
                "recovery": {"batch_size": 2, "enter_queue_depth": 3, "hold": "1s"},
                "modes": {"min_dwell": "500ms", "startup_window": "2s", "outage_min_samples": 3},
                "retry_budget": {"floor_per_s": 0.5, "global_floor_per_s": 1},
            }
        )
        self.gate = self.h.gate
        self.flying: list[Ticket] = []  # admitted, not yet released (the app's view)
        self.waiting: list[Waiter] = []
        self.before = 0

    # --- helpers -------------------------------------------------------------------------------
    def collect(self) -> None:
        """Granted waiters become the app's in-flight work; answered ones are dropped."""
        still = []
        for w in self.waiting:
            if w.state == ADMITTED:
                self.flying.append(w.ticket)
            elif w.state == WAITING:
                still.append(w)
            else:
                assert w.state == REFUSED
                self.check_refusal(w.result)
        self.waiting = still

    def check_refusal(self, r: Refusal | None) -> None:
        assert r is not None
        assert r.reason in REASONS
        assert r.status in REASONS[r.reason], r
        assert (r.reason, r.status) != ("overload", 429), "429 only with overload_status: 429"
        assert r.retry_after_ms > 0

    def step(self) -> None:
        self.before = self.gate.in_flight

    # --- rules -----------------------------------------------------------------------------------
    @rule(
        caller=st.sampled_from(CALLERS),
        retry=st.booleans(),
        origin=st.sampled_from([None, None, None, "east"]),
        timeout=st.sampled_from([None, None, 0.01, 0.2, 2.0]),
        priority=st.integers(0, 3),
    )
    def admit(
        self, caller: str, retry: bool, origin: str | None, timeout: float | None, priority: int
    ) -> None:
        self.step()
        t = self.h.ticket(caller, retry=retry, origin=origin, timeout=timeout, priority=priority)
        r = self.gate.admit(t)
        if r is None:
            self.flying.append(t)
        elif isinstance(r, Waiter):
            self.waiting.append(r)
        else:
            self.check_refusal(r)
        self.collect()

    @precondition(lambda self: self.flying)
    @rule(i=st.integers(0, 1000), outcome=st.sampled_from(OUTCOMES))
    def release(self, i: int, outcome: Outcome) -> None:
        self.step()
        t = self.flying.pop(i % len(self.flying))
        self.gate.release(t, outcome)
        self.collect()

    @precondition(lambda self: self.waiting)
    @rule(i=st.integers(0, 1000))
    def cancel(self, i: int) -> None:
        self.step()
        w = self.waiting.pop(i % len(self.waiting))
        w.cancel()  # a granted-but-unclaimed slot is handed back by the gate itself
        self.collect()

    @rule(dt=st.sampled_from([0.01, 0.1, 0.1, 0.1, 0.35, 1.2]))
    def tick(self, dt: float) -> None:
        self.step()
        self.h.tick(dt)
        self.collect()

    @rule(ok=st.booleans())
    def probe(self, ok: bool) -> None:
        self.step()
        self.gate.on_probe(ok, self.h.clock.now)
        self.collect()

    @rule(action=st.sampled_from(["recovery", "normal", "shield"]))
    def command(self, action: str) -> None:
        self.step()
        try:
            if action == "shield":
                self.gate.command("shield", ttl=1, allow=["repair"])
            else:
                self.gate.command(action)
        except ValueError:
            assert action == "normal" and self.gate.modes.state is Mode.SHIELD
        self.collect()

    # --- invariants ------------------------------------------------------------------------------
    @invariant()
    def books_balance(self) -> None:
        g = self.gate
        assert g.in_flight == len(self.flying)
        per_caller = Counter(t.caller_index for t in self.flying)
        for c in g.callers:
            assert c.in_flight == per_caller.get(c.index, 0)
        assert g.queue.total == len(self.waiting) <= MAX_QUEUE
        assert sum(g.queue.by_level) == g.queue.total
        assert sum(len(lane) for lanes in g.queue.lanes for lane in lanes.values()) == g.queue.total

    @invariant()
    def admissions_stay_within_the_limit_and_caps(self) -> None:
        g = self.gate
        if g.in_flight > self.before:
            assert g.in_flight <= g.limiter.limit
            for c in g.callers:
                if c.cap < NO_CAP:
                    assert c.in_flight <= c.cap

    def teardown(self) -> None:
        for w in self.waiting:
            w.cancel()
        self.waiting = []
        for t in self.flying:
            self.gate.release(t, Outcome(200, 0.01))
        self.flying = []
        self.h.tick(5.0)
        g = self.gate
        assert g.in_flight == 0 and g.queue.total == 0 and not g.queue.expiries
        assert all(c.in_flight == 0 and c.queued == 0 for c in g.callers)
        assert all(len(lane) == 0 for lanes in g.queue.lanes for lane in lanes.values())
        assert g.queue.active_weight == [
            sum(lane.caller.weight for lane in active) for active in g.queue.active
        ]


def test_gate_books_under_random_interleavings() -> None:
    run_state_machine_as_test(
        GateMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
