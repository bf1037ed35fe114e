"""Pure pieces of the harness's analysis: percentiles, windows, /status parsing, figures."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.analysis import analyze
from loadtest.backend_sim import thrashed_service_time
from loadtest.proxy_status import status_figures
from loadtest.run_data import RunData, request_id
from loadtest.scenario import load_scenario
from loadtest.stats import bin_counts, bin_max, count_in, percentile, rate_in


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2  # unsorted input


def test_windows_and_bins() -> None:
    times = [0.1, 0.2, 0.9, 1.0, 1.5, 2.99, 3.0]
    assert count_in(times, 0.0, 1.0) == 3  # half-open
    assert rate_in(times, 1.0, 3.0) == pytest.approx(1.5)
    assert rate_in(times, 2.0, 2.0) == 0.0
    assert bin_counts(times, 0.0, 3.0, 1.0) == [3, 2, 1]
    assert bin_max([(0.1, 2), (0.4, 5), (1.2, 1)], 0.0, 2.0, 0.5) == [5, 0, 1, 0]


def test_thrash_formula() -> None:
    assert thrashed_service_time(0.05, 0.5, 0, 10) == pytest.approx(0.05)
    assert thrashed_service_time(0.05, 0.5, 10, 10) == pytest.approx(0.075)
    assert thrashed_service_time(0.05, 0.5, 1000, 10) == pytest.approx(2.55)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {
                "mode": "RECOVERY",
                "limit": 12,
                "in_flight": 9,
                "queue": {"total": 40, "max": 9},
                "drain": {"backlog": 90, "eta_s": 12.5},
            },
            {"mode": "RECOVERY", "limit": 12.0, "in_flight": 9.0, "queued": 40.0, "eta_s": 12.5},
        ),
        (
            {"mode": "NORMAL", "protection": "off", "in_flight": 3},
            {"mode": "NORMAL", "limit": None, "in_flight": 3.0, "queued": None, "eta_s": None},
        ),
        (
            {"mode": "OUTAGE", "limiter": {"limit": 4, "in_flight": 1}, "queued": 7},
            {"mode": "OUTAGE", "limit": 4.0, "in_flight": 1.0, "queued": 7.0, "eta_s": None},
        ),
        ({}, {"mode": None, "limit": None, "in_flight": None, "queued": None, "eta_s": None}),
    ],
)
def test_status_figures_tolerate_shapes(doc: dict[str, Any], expected: dict[str, Any]) -> None:
    assert status_figures(doc) == expected


def _synthetic_run() -> RunData:
    """A tiny reopen run: 2 fresh before, a backlog of 2 released at t=10, fresh after."""
    sc, _ = load_scenario("reopen")
    sc = sc.with_timing(warmup=5.0, observe=10.0, last_window=2.0)
    t_start, t_trigger, t_end = 5.0, 10.0, 20.0
    # [id, kind, home, caller, intended, end, ok, attempts]
    wfs = [
        [0, 0, 0, 0, 7.0, 7.05, 1, 1],
        [1, 0, 0, 1, 8.0, 8.1, 1, 1],
        [2, 1, 0, 0, 10.0, 12.0, 1, 2],  # backlog: retried once, then ok at t0 + 2
        [3, 1, 0, 2, 10.0, 11.0, 0, 1],  # backlog: failed (non-retryable)
        [4, 0, 0, 0, 11.0, 11.5, 1, 2],
        [5, 0, 0, 3, 12.0, None, 0, 1],  # unfinished
        [6, 0, 0, 1, 18.5, 18.6, 1, 1],  # after the fresh window (too close to the end)
    ]
    # (wf, attempt, region, sent, done, code, retry-after)
    atts = [
        (0, 0, 0, 7.0, 7.05, "200", None),
        (1, 0, 0, 8.0, 8.1, "200", None),
        (2, 0, 0, 10.001, 11.0, "timeout", None),
        (2, 1, 0, 11.0, 12.0, "200", None),
        (3, 0, 0, 10.002, 11.0, "404 -", None),
        (4, 0, 0, 11.0, 11.2, "503 overload", 0.2),
        (4, 1, 0, 11.4, 11.5, "200", None),
        (5, 0, 0, 12.0, 13.0, "timeout", None),
        (6, 0, 0, 18.5, 18.6, "200", None),
    ]
    backend = {
        "capacity": 200.0,
        "config": {"workers": 10},
        "arrivals": [(7.0, 0), (8.0, 0), (10.0, 0), (10.0, 0), (11.0, 0), (11.4, 0), (18.5, 0)],
        # (t, request id, foreign, gone): 2.0 was served after its client timed out (wasted)
        "completions": [
            (7.05, request_id(0, 0), 0, 0),
            (8.1, request_id(1, 0), 0, 0),
            (11.2, request_id(2, 0), 0, 1),
            (12.0, request_id(2, 1), 0, 0),
            (11.5, request_id(4, 1), 0, 0),
            (18.6, request_id(6, 0), 0, 0),
        ],
        "rejections": [],
        "samples": [(10.5, 10, 3), (11.0, 10, 7), (15.0, 2, 0)],
        "peak_queue": 7,
        "peak_busy": 10,
    }
    return RunData(
        scenario=sc,
        arm="direct",
        seed=1,
        capacity_scale=1.0,
        t_start=t_start,
        t_trigger=t_trigger,
        t_end=t_end,
        t0=10.0,
        fleet={"workflows": wfs, "attempts": atts, "lag": [(6.0, 0.001), (19.0, 0.030)]},
        backends={"east": backend},
        cpu={"fleet": 0.2},
    )


def test_analyze_synthetic_run() -> None:
    r = analyze(_synthetic_run())
    b = r["backlog"]
    assert (b["n"], b["succeeded"], b["failed"], b["unfinished"]) == (2, 1, 1, 0)
    assert b["share"] == 0.5
    assert b["drain_s"] is None  # not every backlog workflow succeeded
    assert b["last_success_s"] == pytest.approx(2.0)
    assert b["bound_s"] == pytest.approx(2 / (200 - 120))
    assert b["release_spread_ms"] == pytest.approx(2.0)
    assert b["open_at_last_window"] == 0 and b["attempts_in_last_window"] == 0
    # First tries after t0: wf 2, 3, 4, 5, 6; backend arrivals after t0: 5.
    assert r["first_tries_after_t0"] == 5
    assert r["amplification"] == pytest.approx(5 / 5)
    # Completed after t0: 2.0 (wasted), 2.1, 4.1, 6.0 -> 1 of 4 wasted.
    assert r["wasted_fraction"] == pytest.approx(0.25)
    assert r["goodput_last_window"] == pytest.approx(0.5)  # one 200 in the last 2 s
    assert r["answers"] == {"200": 5, "timeout": 2, "404 -": 1, "503 overload": 1}
    before, after = r["fresh"]["before"], r["fresh"]["after"]
    assert (before["n"], before["ok"]) == (2, 2)
    assert before["p50_ms"] == pytest.approx(50.0)
    assert (after["n"], after["ok"], after["unfinished"]) == (2, 1, 1)
    assert after["success"] == 0.5
    v = r["validity"]
    assert not v["valid"]  # the 30 ms lag sample is the p99 of two samples
    assert "loop lag" in v["invalid_reasons"][0]
    assert r["backends"]["east"]["peak_queue_after_t0_sampled"] == 7
    assert len(r["timeline"]["x"]) == len(r["timeline"]["regions"]["east"]["client_ok"])


def test_analyze_outage_counts_workflows_open_at_the_first_good_probe() -> None:
    run = _synthetic_run()
    sc, _ = load_scenario("backend-outage")
    run.scenario = sc.with_timing(warmup=5.0, outage=2.0, observe=8.0, last_window=2.0)
    run.t0 = 10.5
    r = analyze(run)
    # Open at 10.5: wf 2 (ends 12.0), 3 (ends 11.0); wf 4 and 5 start later.
    assert r["backlog"]["n"] == 2
    assert r["times"]["t0"] == 10.5


def test_amplification_counts_work_owed_at_t0() -> None:
    """After an outage the open workflows tried before t0; one retry each is no amplification."""
    sc, _ = load_scenario("backend-outage")
    sc = sc.with_timing(warmup=5.0, observe=10.0, last_window=2.0)
    wfs = [
        [0, 0, 0, 0, 8.0, 11.0, 1, 2],  # open at t0: failed in the outage, then served
        [1, 0, 0, 1, 12.0, 12.05, 1, 1],  # fresh after t0
    ]
    atts = [
        (0, 0, 0, 8.0, 8.01, "500 backend:outage", None),
        (0, 1, 0, 10.5, 11.0, "200", None),
        (1, 0, 0, 12.0, 12.05, "200", None),
    ]
    backend = {
        "capacity": 200.0,
        "config": {"workers": 10},
        "arrivals": [(8.0, 0), (10.5, 0), (12.0, 0)],
        "completions": [(11.0, request_id(0, 1), 0, 0), (12.05, request_id(1, 0), 0, 0)],
        "rejections": [],
        "samples": [],
        "peak_queue": 0,
        "peak_busy": 1,
    }
    run = RunData(
        scenario=sc,
        arm="sluice",
        seed=1,
        capacity_scale=1.0,
        t_start=5.0,
        t_trigger=7.0,
        t_end=20.0,
        t0=10.0,
        fleet={"workflows": wfs, "attempts": atts, "lag": [(6.0, 0.001)]},
        backends={"east": backend},
        cpu={"fleet": 0.2},
    )
    r = analyze(run)
    assert r["backlog"]["n"] == 1
    assert r["first_tries_after_t0"] == 1
    assert r["amplification"] == pytest.approx(2 / 2)  # 2 arrivals for 2 units of work
