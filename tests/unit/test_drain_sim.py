"""End-to-end dynamics on a fake clock (`drain_model`): the gate in front of a simulated
worker-pool backend, a blocked backlog released at once on top of fresh traffic, SDK-like
clients that honour Retry-After. Deterministic (seeded), no sockets, no sleeping.

Not the harness's benchmark (that runs real processes); a guard for the mechanisms it depends
on: the limit found without being told the capacity, the backend's own queue kept within one
round of its workers, the backlog paced back and drained near N / (C - fresh), fresh traffic
kept whole, the limit never exceeded.
"""

from __future__ import annotations

import statistics

import pytest

from .drain_model import run

# Drain / ideal over seeds 1-5: the median and the worst. The model lands at about 1.1
# (20 workers) and 1.25 (40), a few seeds higher (DESIGN.md §6's 1.2 is the harness's
# figure): one pinned seed against one bound was a coin toss, the median of five is not.
_DRAIN_BOUNDS = {20: (1.2, 1.25), 40: (1.3, 1.4)}


@pytest.mark.parametrize("workers", [20, 40])
def test_backlog_drains_at_the_learned_pace_without_thrashing(workers: int) -> None:
    service, backlog, fresh_rate = 0.05, 3000, 100.0
    ideal = backlog / (workers / service - fresh_rate)
    drains = []
    for seed in range(1, 6):
        f = run(
            workers=workers,
            service=service,
            jitter=0.2,
            thrash=0.0,
            fresh_rate=fresh_rate,
            backlog=backlog,
            client_timeout=None,  # patient clients that honour Retry-After
            shared_callers=False,
            warmup=20.0,
            observe=60.0,
            seed=seed,
        )
        assert f.drain is not None and f.backlog_failed == 0  # every backlog request succeeded
        assert f.max_backend_queue <= workers  # within one round of its workers
        assert f.fresh_ok / (f.fresh_ok + f.fresh_failed) >= 0.995
        assert f.over_limit == 0
        assert f.client_timeouts == 0 and f.wasted == 0
        assert set(f.refusals) <= {"overload", "retry-budget", "deadline"}
        drains.append(f.drain / ideal)
    median, worst = _DRAIN_BOUNDS[workers]
    assert statistics.median(drains) <= median, drains
    assert max(drains) <= worst, drains


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
