"""The storm sweep (issue 16, loadtest/sweep*.py): its draws, its judge, and the harness parts it
added (the backend's capacity step, the backlog series, the pre-spawned backlog). Pure: no
processes, no timing assertions."""

from __future__ import annotations

import asyncio
import copy
import math
import time
from dataclasses import replace
from typing import Any

import pytest

from loadtest import sweep as sw
from loadtest import sweep_draw as sd
from loadtest import sweep_judge as sj
from loadtest import sweep_report as sr
from loadtest.arm_schedule import backlog_lead, backlog_spawn_at
from loadtest.backend_sim import BackendConfig, Simulator
from loadtest.fleet import IncidentShape
from loadtest.profiles import PROFILE_NAMES, make_profile
from loadtest.scenario import Scenario, load_scenario
from loadtest.timeline import backlog_series

SEEDS = range(1, sw.SWEEP_RUNS + 1)
INITIAL = 16


# --- the draws ---------------------------------------------------------------------------------
def _offered(d: sd.Draw) -> float:
    """The worst-case offered attempts, recomputed here from the profiles' own delays."""
    if d.kind == "hostile":
        return d.fresh_rate + d.backlog + d.hostile_rate_cap
    if d.kind == "naive":
        cycle = min(d.naive_retry_delay, d.timeout)
        sends = [k * cycle for k in range(sd.NAIVE_RETRIES + 1)]
    else:  # the SDK kinds: the profile's backoff at its shortest, 0.8 · 2ⁿ · 0.8
        sdk = make_profile("sdk")
        sends = [0.0]
        for k in range(sdk.retries):
            sends.append(sends[-1] + sdk.backoff_base * 2**k * (1 - sdk.backoff_spread))
    return d.fresh_rate + d.backlog * sum(1 for t in sends if t < 1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_draw_respects_every_bound(seed: int) -> None:
    d = sd.draw(seed)
    assert d.seed == seed
    assert 5 <= d.workers <= 100
    assert 0.020 <= d.service_time <= 0.300
    assert 50 <= d.capacity <= 1000
    assert 0.5 <= d.thrash <= 2.0  # at least the simulator's default
    assert 2 <= d.backlog_s <= 10 and d.backlog == round(d.backlog_s * d.capacity)
    low = min(d.capacity, d.capacity_after)
    assert 0 <= d.fresh_rate <= 0.6 * low + 0.05  # λ₀ fits after a halving too
    assert 0 <= d.warmup <= 60
    assert 1 <= len(d.callers) <= 50
    assert len({name for name, _ in d.callers}) == len(d.callers)
    assert all(1 <= w <= 4 for _, w in d.callers)
    assert d.kind in sd.KINDS and d.kind in PROFILE_NAMES
    assert 0.05 <= d.naive_retry_delay <= 1.0
    assert 0.5 <= d.timeout <= 5.0
    if d.step == "none":
        assert d.step_workers is None and d.step_at is None
    else:
        want = d.workers // 2 if d.step == "halve" else d.workers * 2
        assert d.step_workers == want and d.step_workers >= 1
        drain0 = d.backlog / (d.capacity - d.fresh_rate)
        assert drain0 >= sd.STEP_MIN_DRAIN
        assert d.step_at == pytest.approx(drain0 / 2, abs=0.051)  # the middle of the drain
    assert _offered(d) <= sd.OFFERED_MAX
    assert d.offered == pytest.approx(_offered(d), abs=0.1)
    if d.kind == "azure-sdk":
        assert max(d.capacity, d.capacity_after) <= 400
        assert d.backlog + d.fresh_rate * d.timeout <= 2000
    if d.kind == "hostile":
        assert d.hostile_rate_cap >= max(d.capacity, d.capacity_after)
    # The scenario it becomes validates, and its run sees the whole drain bound.
    sc = sd.scenario_for(d, INITIAL)
    assert sc.trigger == "reopen" and sc.regions == ["east"]
    assert sc.backend.workers == d.workers and sc.traffic.backlog == d.backlog
    assert sc.clients.profile == d.kind
    assert sc.timing.observe >= sd.drain_bound(d, INITIAL) + 3.0 - 0.05
    assert sc.timing.observe <= max(sd.OBSERVE_MAX, sd.drain_bound(d, INITIAL) + 3.05)


def test_draws_are_deterministic_and_cover_the_space() -> None:
    draws = [sd.draw(s) for s in SEEDS]
    assert draws == [sd.draw(s) for s in SEEDS]
    assert {d.kind for d in draws} == set(sd.KINDS)
    assert any(d.warmup == 0 for d in draws)  # cold starts
    assert {d.step for d in draws} == {"none", "halve", "double"}
    assert any(d.fresh_rate == 0 for d in draws) and any(d.fresh_rate > 0 for d in draws)
    assert any(d.timeout < 1 for d in draws) and any(d.timeout >= 1 for d in draws)


def test_attempts_in_first_second() -> None:
    assert sd.attempts_in_first_second("naive", 0.05, 5.0) == 4  # capped by its 3 retries
    assert sd.attempts_in_first_second("naive", 0.5, 5.0) == 2
    assert sd.attempts_in_first_second("naive", 1.0, 5.0) == 1
    assert sd.attempts_in_first_second("naive", 1.0, 0.5) == 2  # timeouts retry at once
    assert sd.attempts_in_first_second("sdk", 0.05, 0.5) == 2
    assert sd.offered_at_worst("hostile", 500, 100.0, 0.05, 1.0, 900.0) == 1500


def test_ideal_drain_is_piecewise_across_a_step() -> None:
    assert sd.ideal_drain(600, 200.0, 200.0, 50.0) == pytest.approx(4.0)
    # 2 s at 150/s leaves 300 at (100 - 50)/s: 6 s more.
    assert sd.ideal_drain(600, 200.0, 100.0, 50.0, step_at=2.0) == pytest.approx(8.0)
    # Drained before the step: the step does not count.
    assert sd.ideal_drain(100, 200.0, 100.0, 50.0, step_at=2.0) == pytest.approx(100 / 150)


def test_cold_start_allowance_reads_limiter_initial() -> None:
    d = _draw(workers=64, service_time=0.05)
    assert sd.cold_start_allowance(d, 16) == pytest.approx(2 * 0.05 * 2)
    assert sd.cold_start_allowance(d, 64) == 0.0
    assert sd.cold_start_allowance(d, 100) == 0.0  # max(1, …)
    assert sw.limiter_initial(sw.DEFAULT_SLUICE_CONFIG) >= 1


def test_parse_seeds() -> None:
    assert sw.parse_seeds("1-4") == [1, 2, 3, 4]
    assert sw.parse_seeds("3,7,9") == [3, 7, 9]
    assert sw.parse_seeds("1-2,2,5") == [1, 2, 5]
    for bad in ("", "0", "4-2", "x", "1-"):
        with pytest.raises(ValueError):
            sw.parse_seeds(bad)


# --- judging -----------------------------------------------------------------------------------
def _draw(**changes: Any) -> sd.Draw:
    """C = 10 / 0.05 = 200, λ₀ 50, N 600: ideal drain 4 s, no allowance with initial 16."""
    base = sd.Draw(
        seed=99,
        kind="sdk",
        workers=10,
        service_time=0.05,
        thrash=1.0,
        backlog_s=3.0,
        backlog=600,
        fresh_share=0.25,
        fresh_rate=50.0,
        warmup=10.0,
        callers=(("orchestrator-a", 1),),
        naive_retry_delay=0.2,
        timeout=2.0,
        step="none",
        step_workers=None,
        step_at=None,
        hostile_rate_cap=600.0,
        offered=1250.0,
        tries=1,
    )
    return replace(base, **changes)


def _result(d: sd.Draw, per_bin: float = 15.0) -> dict[str, Any]:
    """A sluice run of `d` that meets every figure: the backlog drains at C - λ₀."""
    bins = 60
    ok = [per_bin] * 40 + [0.0] * (bins - 40)
    left, open_ = float(d.backlog), []
    for x in ok:
        open_.append(max(0, round(left)))
        left -= x
    samples = [(round(i * 0.05, 3), d.workers, 2) for i in range(120)]
    return {
        "scenario": f"sweep-{d.seed}",
        "arm": "sluice",
        "profile": d.kind,
        "backlog": {
            "n": d.backlog,
            "succeeded": d.backlog,
            "drain_s": 4.2,
            "series": {"bin_s": 0.1, "ok": ok, "open": open_},
        },
        "fresh": {
            "before": {"n": 400, "ok": 400, "unfinished": 0, "success": 1.0, "p99_ms": 70.0},
            "after": {"n": 900, "ok": 899, "unfinished": 1, "success": 0.999, "p99_ms": 140.0},
        },
        "answers_after_t0": {"200": 1500, "503 overload": 40, "504 deadline": 2},
        "backends": {
            "east": {
                "workers": d.workers,
                "peak_queue": 3,
                "steps": [],
                "samples_after_t0": samples,
            }
        },
        "validity": {
            "valid": True,
            "loop_lag_p99_ms": 4.0,
            "loop_lag_max_ms": 12.0,
            "dropped_arrivals": 0,
        },
    }


def _set(r: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    r = copy.deepcopy(r)
    *parents, leaf = path.split(".")
    node = r
    for key in parents:
        node = node[key]
    node[leaf] = value
    return r


def _failed(r: dict[str, Any], d: sd.Draw) -> set[str]:
    return {c.figure for c in sj.judge(r, d, INITIAL) if not c.ok}


def test_a_good_polite_run_meets_every_figure() -> None:
    d = _draw()
    checks = sj.judge(_result(d), d, INITIAL)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    names = {c.figure for c in checks}
    assert {"backlog succeeded", "fresh workflows failed", "drain", "backlog goodput"} <= names
    assert {"client timeouts", "connection errors", "fresh success", "fresh p99"} <= names


@pytest.mark.parametrize(
    ("path", "value", "figure"),
    [
        ("backlog.succeeded", 599, "backlog succeeded"),
        ("backlog.drain_s", None, "drain"),
        ("backlog.drain_s", 1.2 * 4.0 + 0.01, "drain"),  # bound 4.8 s, no allowance
        ("fresh.after.unfinished", 0, "fresh workflows failed"),  # the 900th failed
        ("answers_after_t0.503 backend:queue-full", 1, "non-200 explicit (§4 table)"),
        ("answers_after_t0.503 -", 1, "non-200 explicit (§4 table)"),
        ("answers_after_t0.timeout", 1, "client timeouts"),
        ("answers_after_t0.connection-error", 1, "connection errors"),
        ("fresh.after.success", 0.994, "fresh success"),
        ("fresh.after.p99_ms", 150.1, "fresh p99"),  # 2 x 50 + 50 ms
        ("backends.east.peak_queue", 11, "backend queue ≤ one round"),
    ],
)
def test_each_figure_can_fail(path: str, value: Any, figure: str) -> None:
    d = _draw()
    assert _failed(_set(_result(d), path, value), d) == {figure}


def test_drain_bound_includes_the_cold_start_allowance() -> None:
    d = _draw(workers=64, service_time=0.32)  # C 200; allowance 2 x 0.32 x log₂(4) = 1.28 s
    r = _set(_result(d), "backlog.drain_s", 1.2 * 4.0 + 1.2)
    assert "drain" not in _failed(r, d)
    assert "drain" in _failed(_set(r, "backlog.drain_s", 1.2 * 4.0 + 1.3), d)


def test_non_polite_runs_are_not_held_to_the_drain() -> None:
    d = _draw(kind="naive")
    r = _set(_set(_result(d), "backlog.succeeded", 10), "backlog.drain_s", None)
    assert _failed(r, d) == set()
    assert "drain" not in {c.figure for c in sj.judge(r, d, INITIAL)}
    # … but still to the reason table.
    assert _failed(_set(r, "answers_after_t0.502 -", 3), d) == {"non-200 explicit (§4 table)"}


def test_short_timeouts_may_time_out() -> None:
    d = _draw(timeout=0.8)
    r = _set(
        _set(_result(d), "answers_after_t0.timeout", 30), "answers_after_t0.connection-error", 2
    )
    assert _failed(r, d) == set()


def test_no_fresh_traffic_is_not_judged_on_it() -> None:
    d = _draw(fresh_rate=0.0, fresh_share=0.0)
    r = _result(d, per_bin=20.0)
    r["backlog"]["drain_s"] = 3.1  # ideal 600 / 200 = 3 s
    r["fresh"]["after"] = {"n": 0, "ok": 0, "unfinished": 0, "success": None, "p99_ms": None}
    assert _failed(r, d) == set()


def test_goodput_windows_from_the_allowance_until_one_second_of_c_is_left() -> None:
    d = _draw()
    windows = sj.goodput_windows(_result(d), d, INITIAL)
    # 600 open, 15 served per 0.1 s: under 200 open from 2.7 s: two full windows.
    assert [w[0] for w in windows] == [0.0, 1.0]
    assert all(w[1] == 150 and w[2] == 150 for w in windows)
    # A slow second window fails the figure …
    r = _result(d)
    r["backlog"]["series"]["ok"][10:20] = [13.0] * 10  # 130 / 150 = 0.87
    assert _failed(r, d) == {"backlog goodput"}
    # … and at 0.9 exactly it passes.
    r["backlog"]["series"]["ok"][10:20] = [13.5] * 10
    assert _failed(r, d) == set()


def test_goodput_is_not_judged_before_the_allowance_ends() -> None:
    d = _draw(workers=64, service_time=0.32)  # allowance 1.28 s: windows start at 1.3 s
    r = _result(d)
    r["backlog"]["series"]["ok"][0:12] = [0.0] * 12  # a slow start, inside the allowance
    r["backlog"]["series"]["ok"][13:40] = [15.0 + 12 * 15 / 27] * 27
    r["backlog"]["series"]["open"] = _open(600, r["backlog"]["series"]["ok"])
    assert sj.goodput_windows(r, d, INITIAL)[0][0] == pytest.approx(1.3)
    assert "backlog goodput" not in _failed(r, d)
    # The same run where the allowance is 0 (C 200 again, workers = limiter.initial): judged.
    no_allowance = replace(d, workers=16, service_time=0.08)
    assert "backlog goodput" in _failed(r, no_allowance)


def _open(n: int, ok: list[float]) -> list[int]:
    left, out = float(n), []
    for x in ok:
        out.append(max(0, round(left)))
        left -= x
    return out


def _stepped(step: str, workers_after: int, n: int) -> tuple[sd.Draw, dict[str, Any]]:
    """A step at +1 s; the backlog drains at C - λ₀ before and after it, never under 1 s of C
    within the 6 s recorded."""
    d = _draw(step=step, step_workers=workers_after, step_at=1.0, backlog=n)
    r = _result(d)
    ok = [15.0] * 10 + [d.capacity_after / 10 - 5] * 50
    r["backlog"]["series"]["ok"] = ok
    r["backlog"]["series"]["open"] = _open(n, ok)
    r["backlog"]["drain_s"] = 5.0
    r["backends"]["east"]["steps"] = [(1.0, d.workers, workers_after)]
    r["backends"]["east"]["samples_after_t0"] = [
        (round(i * 0.05, 3), d.workers if i * 0.05 < 1.0 else workers_after, 1) for i in range(120)
    ]
    return d, r


def test_a_halving_is_judged_on_the_queue_after_two_seconds() -> None:
    d, r = _stepped("halve", 5, 900)
    assert _failed(r, d) == set()
    samples = r["backends"]["east"]["samples_after_t0"]
    # Queue past the halved workers inside the 2 s allowed to follow: fine.
    r1 = copy.deepcopy(r)
    r1["backends"]["east"]["samples_after_t0"] = [
        (t, b, 8 if 1.0 <= t < 3.0 else q) for t, b, q in samples
    ]
    assert _failed(r1, d) == set()
    # After them: thrashing.
    r2 = copy.deepcopy(r)
    r2["backends"]["east"]["samples_after_t0"] = [
        (t, b, 8 if t >= 3.5 else q) for t, b, q in samples
    ]
    assert _failed(r2, d) == {"after the halving", "backend queue ≤ one round"}


def test_a_doubling_is_judged_on_idle_workers() -> None:
    d, r = _stepped("double", 20, 3000)
    assert _failed(r, d) == set()
    r["backends"]["east"]["samples_after_t0"] = [
        (t, 17 if t >= 3.0 else b, q) for t, b, q in r["backends"]["east"]["samples_after_t0"]
    ]  # 85 % busy
    assert _failed(r, d) == {"after the doubling"}


def test_void_and_exit_code() -> None:
    d = _draw()
    good = _result(d)
    assert sj.void_reasons(good) == []
    assert sj.void_reasons(_set(good, "validity.loop_lag_max_ms", 50.0)) == []
    assert sj.void_reasons(_set(good, "validity.loop_lag_max_ms", 50.1))
    assert sj.void_reasons(_set(good, "validity.dropped_arrivals", 3))
    assert sj.void_reasons(_set(good, "backlog.release_prepared", 600)) == []
    assert sj.void_reasons(_set(good, "backlog.release_prepared", 0))

    def outcome(verdict: str) -> sj.RunOutcome:
        checks = sj.judge(good if verdict != "FAIL" else _set(good, "backlog.succeeded", 1), d, 16)
        return sj.RunOutcome(d, checks, ["lag"] if verdict == "VOID" else [])

    assert sj.exit_code([outcome("PASS")] * 40) == 0
    assert sj.exit_code([outcome("PASS")] * 39 + [outcome("FAIL")]) == 1
    assert sj.exit_code([outcome("PASS")] * 36 + [outcome("VOID")] * 4) == 0
    assert sj.exit_code([outcome("PASS")] * 35 + [outcome("VOID")] * 5) == 1
    assert sj.exit_code([]) == 1
    unavailable = {"arm": "sluice", "unavailable": "sluice exited early"}
    assert [c.ok for c in sj.judge(unavailable, d, INITIAL)] == [False]
    assert sj.void_reasons(unavailable) == []  # a run that could not run fails, it is not void


def test_table_and_distribution_name_every_run() -> None:
    d = _draw()
    good = sj.RunOutcome(d, sj.judge(_result(d), d, INITIAL), [], {"goodput_min": 1.0})
    bad_d = replace(d, seed=7)
    bad = sj.RunOutcome(bad_d, sj.judge(_set(_result(d), "backlog.succeeded", 1), d, 16), [])
    text = sr.render_table([good, bad])
    assert "PASS" in text and "FAIL: backlog succeeded" in text
    assert "runs: 1/2 valid runs pass every figure" in sr.render_distribution([good, bad])


# --- what the harness gained -------------------------------------------------------------------
def test_backend_capacity_step() -> None:
    async def go() -> None:
        sim = Simulator(BackendConfig(workers=4, service_time=10.0, jitter=0.0, thrash=0.0))
        for _ in range(7):
            assert not isinstance(sim.admit(False), str)
        assert (sim.busy, len(sim.queue)) == (4, 3)
        sim.set_workers(8)  # more workers: the queue starts at once
        assert (sim.busy, len(sim.queue), sim.workers) == (7, 0, 8)
        sim.set_workers(2)  # fewer: work in service stays, nothing new starts
        sim.admit(False)
        assert (sim.busy, len(sim.queue)) == (7, 1)
        assert [s[1:] for s in sim.steps] == [(4, 8), (8, 2)]
        assert sim.stats(raw=False)["steps"] == sim.steps
        with pytest.raises(ValueError):
            sim.set_workers(0)

    asyncio.run(go())


def test_capacity_step_and_naive_delay_in_the_scenario_schema() -> None:
    d = _draw(kind="naive", step="halve", step_workers=5, step_at=2.5, naive_retry_delay=0.3)
    sc = sd.scenario_for(d, INITIAL)
    assert sc.backend.capacity_step is not None
    assert (sc.backend.capacity_step.at, sc.backend.capacity_step.workers) == (2.5, 5)
    assert sc.clients.naive_retry_delay == pytest.approx(0.3)
    x2 = sc.scaled(2.0)
    assert x2.backend.capacity_step is not None and x2.backend.capacity_step.workers == 10
    assert x2.with_profile("sdk").backend.capacity_step == x2.backend.capacity_step
    assert make_profile("naive", naive_retry_delay=0.3).after_error == 0.3
    assert isinstance(Scenario.model_validate(sd.scenario_data(d, INITIAL)), Scenario)


def test_backlog_series() -> None:
    # [id, kind, home, caller, start, end, ok, attempts]
    backlog = [
        [0, 1, 0, 0, 10.0, 10.05, 1, 1],
        [1, 1, 0, 0, 10.0, 10.25, 1, 2],
        [2, 1, 0, 0, 10.0, 10.25, 0, 4],  # gave up
        [3, 1, 0, 0, 10.0, None, 0, 6],  # still open at the end
    ]
    s = backlog_series(backlog, 10.0, 10.5, width=0.1)
    assert s["ok"] == [1, 0, 1, 0, 0]
    assert s["open"] == [4, 3, 3, 1, 1]


def test_short_warmups_spawn_the_backlog_ahead() -> None:
    sc, _ = load_scenario("reopen")
    assert backlog_lead(sc) == 0.0  # 6 s of warm-up: spawned during it, as before
    cold = sc.with_timing(warmup=0.0)
    assert backlog_lead(cold) == pytest.approx(1000 / 500 + 1.0)
    assert math.isclose(backlog_lead(sc.with_timing(warmup=2.9)), 3.0)


def test_long_warmups_spawn_the_backlog_just_before_the_release() -> None:
    sc, _ = load_scenario("reopen")  # N 1000: spawned in 2 s, + 1 s margin
    assert backlog_spawn_at(sc, 100.0, 106.0) is None  # 6 s: from the start, as before
    assert backlog_spawn_at(sc.with_timing(warmup=0.0), 100.0, 103.0) == 100.0
    # 57 s: its connections would idle past Sluice's 10 s header timeout; spawned 3 s before.
    assert backlog_spawn_at(sc.with_timing(warmup=57.0), 100.0, 157.0) == pytest.approx(154.0)


def test_incident_shape_holds_the_backlog_back_until_its_spawn() -> None:
    shape = IncidentShape(12, 500.0, run_time=100.0, backlog_after=50.0, early_users=2)
    shape.start_time = time.monotonic()
    assert shape.tick() == (2, 500.0)  # fresh traffic only
    shape.start_time -= 60.0
    assert shape.tick() == (12, 500.0)
    shape.start_time -= 60.0
    assert shape.tick() is None
    plain = IncidentShape(12, 500.0, run_time=100.0)
    plain.start_time = time.monotonic()
    assert plain.tick() == (12, 500.0)
