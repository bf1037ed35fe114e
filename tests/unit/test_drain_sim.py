"""End-to-end dynamics on a fake clock (`drain_model`): the gate in front of a simulated
worker-pool backend, a blocked backlog released at once on top of fresh traffic, SDK-like
clients that honour Retry-After. Deterministic (seeded), no sockets, no sleeping.

Not the harness's benchmark (that runs real processes); a guard for the mechanisms it depends
on: the limit found without being told the capacity, the backend's own queue kept within one
round of its workers, the backlog paced back and drained within the project's stated figure
(1.20 x N / (C - fresh)), fresh traffic kept whole, the limit never exceeded.
"""

from __future__ import annotations

import functools

import pytest

from .drain_model import Figures, run

# The figure the project states (DESIGN.md §6; README: "within about 1.1-1.2 x N/(C - λ0)"):
# every backlog request succeeds within 1.20 x N / (C - λ0), at a capacity the config does
# not state and on a second one with the same config. Every seed is held to it: it is a
# bound on each run, not on an average.
DRAIN_FIGURE = 1.20
SERVICE, BACKLOG, FRESH_RATE = 0.05, 3000, 100.0
SEEDS = range(1, 6)


@functools.cache
def _patient_runs(workers: int) -> tuple[Figures, ...]:
    """The patient shape at `workers` workers, seeds 1-5 (run once, shared by the tests)."""
    return tuple(
        run(
            workers=workers,
            service=SERVICE,
            jitter=0.2,
            thrash=0.0,
            fresh_rate=FRESH_RATE,
            backlog=BACKLOG,
            client_timeout=None,  # patient clients that honour Retry-After
            shared_callers=False,
            warmup=20.0,
            observe=60.0,
            seed=seed,
        )
        for seed in SEEDS
    )


@pytest.mark.parametrize("workers", [20, 40])
def test_backlog_drains_at_the_learned_pace_without_thrashing(workers: int) -> None:
    for f in _patient_runs(workers):
        assert f.drain is not None and f.backlog_failed == 0  # every backlog request succeeded
        assert f.max_backend_queue <= workers  # within one round of its workers
        assert f.fresh_ok / (f.fresh_ok + f.fresh_failed) >= 0.995
        assert f.over_limit == 0
        assert f.client_timeouts == 0 and f.wasted == 0
        assert set(f.refusals) <= {"overload", "retry-budget", "deadline"}


@pytest.mark.parametrize(
    "workers",
    # (At 40 workers the model drained in 1.25-1.29x while the first return could not be due
    # sooner than a second: the backend idled between the queue's last request and it.)
    [20, 40],
)
def test_backlog_drains_within_the_stated_figure(workers: int) -> None:
    ideal = BACKLOG / (workers / SERVICE - FRESH_RATE)  # N / (C - λ0)
    drains = []
    for f in _patient_runs(workers):
        assert f.drain is not None
        drains.append(round(f.drain / ideal, 3))
    assert max(drains) <= DRAIN_FIGURE, drains


def test_reopen_with_impatient_clients_stays_explicit_and_safe() -> None:
    # The harness's `reopen` shape: 1 s client timeouts, a thrashing backend, fresh and
    # backlog sharing callers. Far from the figures' drain bound yet (see the report in the
    # commit log); what must hold already: nothing runs out of retries, fresh traffic keeps
    # succeeding, the backend is never thrashed and wastes little.
    f = run(seed=3)
    assert f.drain is not None and f.backlog_failed == 0
    assert f.fresh_ok / (f.fresh_ok + f.fresh_failed) >= 0.995
    assert f.max_backend_queue <= 2 * 10
    assert f.wasted < 0.01 and f.amplification < 1.1
    assert f.over_limit == 0


def test_a_halving_does_not_book_the_backlog_at_its_thrash() -> None:
    # Storm sweep seed 13 in miniature: 12 workers x 235 ms that slow with their queue, half of
    # them gone 5.7 s into the drain. Until the limit came down to the new knee the backend
    # thrashed (a fifth of what the halved backend serves); that goodput was measured as its
    # capacity, the returns refused meanwhile were booked at it, tens of seconds out, and the
    # backend idled once the limit had settled (drained in 1.65-2.0 x the bound, 60-72 s).
    for seed in (1, 2):
        f = run(
            workers=12,
            service=0.235,
            thrash=1.7,
            fresh_rate=10.2,
            backlog=466,
            client_timeout=2.89,
            step=(6.0 + 5.7, 6),
            observe=70.0,
            seed=seed,
        )
        assert f.drain is not None and f.backlog_failed == 0
        assert f.drain <= 1.6 * f.bound, (f.drain, f.bound)  # bound: 1.2 x N / (C/2 - λ0)
