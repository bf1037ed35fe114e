"""The automatic check of the figures of issues 4, 5 and 15 (loadtest/figures.py)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from loadtest import figures_matrix, scenario_run
from loadtest.analysis import analyze
from loadtest.figures import (
    Check,
    check_isolation,
    check_recovery,
    checks_for,
    is_explicit_answer,
    render_checks,
)
from loadtest.figures_matrix import figures_plan

from .test_loadtest_stats import _synthetic_run

DRAIN_FIGURES = {"backlog succeeded", "backlog drain", "amplification", "wasted work"}


def _result(profile: str = "sdk", /, **changes: Any) -> dict[str, Any]:
    """A minimal `sluice` arm result of `reopen` that meets every figure; `changes` are
    dotted paths (`backlog.drain_ratio`) to replace."""
    r: dict[str, Any] = {
        "scenario": "reopen",
        "arm": "sluice",
        "capacity_scale": 1.0,
        "profile": profile,
        "params": {"regions": ["east"], "home": "east"},
        "backlog": {
            "n": 1000,
            "succeeded": 1000,
            "drain_s": 14.0,
            "bound_s": 12.5,
            "drain_ratio": 14.0 / 12.5,
        },
        "fresh": {
            "before": {"n": 600, "ok": 600, "success": 1.0, "p99_ms": 80.0},
            "after": {"n": 2600, "ok": 2599, "success": 2599 / 2600, "p99_ms": 150.0},
        },
        "exhausted": {"retries": 5, "backlog": 0, "fresh": 0, "max_attempts": 3},
        "amplification": 1.05,
        "wasted_fraction": 0.002,
        "backends": {"east": {"workers": 10, "peak_queue": 9}},
        "answers": {"200": 5000, "503 overload": 900, "504 deadline": 4},
        "answers_after_t0": {"200": 4000, "503 overload": 900, "504 deadline": 4},
        "other_region": None,
        "validity": {"valid": True, "invalid_reasons": []},
    }
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = r
        for key in parents:
            node = node[key]
        node[leaf] = value
    return r


def _two_region(profile: str = "naive") -> dict[str, Any]:
    r = _result(profile)
    r["scenario"] = "two-region"
    r["params"] = {"regions": ["east", "west"], "home": "east"}
    r["backends"]["west"] = {"workers": 10, "peak_queue": 3}
    r["other_region"] = {
        "region": "west",
        "local_goodput_before": 120.0,
        "local_goodput_during": 117.0,
        "local_goodput_change": -0.025,
        "fresh_before": {"n": 600, "ok": 600, "success": 1.0, "p99_ms": 80.0},
        "fresh_during": {"n": 2600, "ok": 2600, "success": 1.0, "p99_ms": 120.0},
    }
    return r


def _by_figure(checks: list[Check]) -> dict[str, Check]:
    return {c.figure: c for c in checks}


def _failed(checks: list[Check]) -> set[str]:
    return {c.figure for c in checks if not c.ok}


def test_a_run_meeting_every_figure_passes_each() -> None:
    checks = check_recovery(_result())
    assert {c.figure for c in checks} >= DRAIN_FIGURES
    assert len(checks) == 10
    assert _failed(checks) == set()


@pytest.mark.parametrize(
    ("changes", "figure"),
    [
        ({"backlog.succeeded": 999}, "backlog succeeded"),
        ({"backlog.n": 0, "backlog.succeeded": 0}, "backlog succeeded"),
        ({"backlog.drain_ratio": 1.2011}, "backlog drain"),
        ({"backlog.drain_ratio": None, "backlog.drain_s": None}, "backlog drain"),
        ({"amplification": 1.11}, "amplification"),
        ({"amplification": None}, "amplification"),
        ({"wasted_fraction": 0.01}, "wasted work"),
        ({"backends.east.peak_queue": 11}, "peak queue behind workers (east)"),
        ({"fresh.after.success": 0.9949}, "fresh success after t0 (east)"),
        ({"fresh.after.success": None}, "fresh success after t0 (east)"),
        ({"fresh.after.p99_ms": 160.1}, "fresh p99 after t0 (east)"),
        ({"fresh.before.p99_ms": None}, "fresh p99 after t0 (east)"),
        ({"answers_after_t0.timeout": 1}, "client timeouts"),
        ({"answers_after_t0.connection-error": 2}, "connection errors"),
        ({"answers_after_t0.503 backend:queue-full": 1}, "other non-200 from the §4 reason table"),
    ],
)
def test_each_figure_fails_on_its_own(changes: dict[str, Any], figure: str) -> None:
    assert _failed(check_recovery(_result(**changes))) == {figure}


def test_limits_are_inclusive_where_the_figure_says_so() -> None:
    edge = _result(
        **{
            "backlog.drain_ratio": 1.20,
            "amplification": 1.1,
            "backends.east.peak_queue": 10,
            "fresh.after.success": 0.995,
            "fresh.after.p99_ms": 160.0,
        }
    )
    assert _failed(check_recovery(edge)) == set()
    assert _failed(check_recovery(_result(wasted_fraction=0.0099))) == set()


def test_naive_and_hostile_get_only_the_every_profile_figures() -> None:
    for profile in ("naive", "hostile"):
        # Their backlog may fail (explicitly): no drain figures, so this still passes.
        r = _result(profile, **{"backlog.succeeded": 10, "backlog.drain_ratio": None})
        r["amplification"] = 3.0
        checks = check_recovery(r)
        assert not DRAIN_FIGURES & {c.figure for c in checks}
        assert _failed(checks) == set()
        r["answers_after_t0"]["timeout"] = 5
        assert _failed(check_recovery(r)) == {"client timeouts"}
    for profile in ("sdk", "sdk-noheader"):
        assert {c.figure for c in check_recovery(_result(profile))} >= DRAIN_FIGURES


def test_the_real_sdk_gets_the_drain_figures_and_must_not_run_out_of_retries() -> None:
    checks = check_recovery(_result("azure-sdk"))
    assert {c.figure for c in checks} >= DRAIN_FIGURES | {"clients out of retries"}
    assert _failed(checks) == set()
    for changes in ({"exhausted.fresh": 1}, {"exhausted.backlog": 2}, {"exhausted": {}}):
        assert _failed(check_recovery(_result("azure-sdk", **changes))) == {
            "clients out of retries"
        }
    # The modelled SDKs do not get that figure (their backlog figure already says it).
    assert "clients out of retries" not in {c.figure for c in check_recovery(_result("sdk"))}


def test_every_backend_queue_is_checked() -> None:
    r = _two_region()
    r["backends"]["west"]["peak_queue"] = 30
    assert _failed(check_recovery(r)) == {"peak queue behind workers (west)"}


@pytest.mark.parametrize(
    ("code", "explicit"),
    [
        ("503 overload", True),
        ("429 overload", True),
        ("429 retry-budget", True),
        ("429 caller-cap", True),
        ("503 spillover", True),
        ("503 outage", True),
        ("504 deadline", True),
        ("502 upstream-connect", True),
        ("504 upstream-timeout", True),
        ("431 bad-request", True),
        ("503 backend:queue-full", False),
        ("500 backend:outage", False),
        ("503 -", False),
        ("404 -", False),
        ("500 overload", False),  # a known reason with a status the table does not give it
        ("503 retry-budget", False),
        ("timeout", False),
        ("connection-error", False),
        ("overload", False),
    ],
)
def test_the_reason_table(code: str, explicit: bool) -> None:
    assert is_explicit_answer(code) is explicit


def test_reason_table_figure_names_what_was_not_explicit() -> None:
    r = _result(**{"answers_after_t0.500 backend:outage": 7, "answers_after_t0.404 -": 2})
    c = _by_figure(check_recovery(r))["other non-200 from the §4 reason table"]
    assert not c.ok
    assert "500 backend:outage \u00d77" in c.measured and "404 - \u00d72" in c.measured
    assert "overload" not in c.measured


def test_answers_before_t0_are_shown_not_counted() -> None:
    # backend-outage: the backend's first fast 500s pass through before t0 (outage detection).
    r = _result(**{"answers.500 backend:outage": 17, "answers.timeout": 2})
    by = _by_figure(check_recovery(r))
    reason = by["other non-200 from the §4 reason table"]
    assert reason.ok and "before t0" in reason.measured and "\u00d717" in reason.measured
    assert by["client timeouts"].ok and "timeout \u00d72" in by["client timeouts"].measured
    assert "before t0" not in by["connection errors"].measured


def test_isolation_passes_and_includes_the_storm_regions_recovery_figures() -> None:
    checks = check_isolation(_two_region())
    names = [c.figure for c in checks]
    assert names[:3] == [
        "west local goodput change",
        "west local success during",
        "west local p99 during",
    ]
    assert "fresh success after t0 (east)" in names
    assert "peak queue behind workers (west)" in names
    assert not DRAIN_FIGURES & set(names)  # naive
    assert {c.figure for c in check_isolation(_two_region("sdk"))} >= DRAIN_FIGURES
    assert _failed(checks) == set()


@pytest.mark.parametrize(
    ("key", "value", "figure"),
    [
        ("local_goodput_change", 0.05, "west local goodput change"),
        ("local_goodput_change", -0.051, "west local goodput change"),
        ("local_goodput_change", None, "west local goodput change"),
        ("fresh_during.success", 0.99, "west local success during"),
        ("fresh_during.p99_ms", 161.0, "west local p99 during"),
    ],
)
def test_each_isolation_figure_fails_on_its_own(key: str, value: Any, figure: str) -> None:
    r = _two_region()
    node = r["other_region"]
    *parents, leaf = key.split(".")
    for k in parents:
        node = node[k]
    node[leaf] = value
    assert _failed(check_isolation(r)) == {figure}


def test_isolation_fails_the_storm_region_too() -> None:
    r = _two_region()
    r["fresh"]["after"]["success"] = 0.97
    assert _failed(check_isolation(r)) == {"fresh success after t0 (east)"}


def test_isolation_without_the_other_region_fails() -> None:
    r = _result()
    assert "other region measured" in _failed(check_isolation(r))


def test_checks_for_chooses_by_arm_and_scenario() -> None:
    assert checks_for(_result()) == check_recovery(_result())
    assert checks_for(_two_region()) == check_isolation(_two_region())
    for arm in ("direct", "passthrough"):
        assert checks_for(_result(arm=arm)) == []
    assert checks_for({"scenario": "reopen", "arm": "direct", "unavailable": "x"}) == []
    gone = checks_for({"scenario": "reopen", "arm": "sluice", "unavailable": "no port\n..."})
    assert [(c.figure, c.ok) for c in gone] == [("arm ran", False)]
    assert "no port" in gone[0].measured


def test_checks_for_reads_what_analyze_produces() -> None:
    r = analyze(_synthetic_run())  # reopen, naive; backlog 1 of 2, 2 timeouts, a "404 -"
    assert checks_for(r) == []  # the direct arm
    r["arm"] = "sluice"
    failed = _failed(checks_for(r))
    assert {"client timeouts", "other non-200 from the §4 reason table"} <= failed
    assert "connection errors" not in failed
    r["profile"] = "sdk"
    assert {"backlog succeeded", "backlog drain"} <= _failed(checks_for(r))


def test_render_checks_lines_and_summary_counts() -> None:
    good = _result()
    bad = _result("sdk-noheader", capacity_scale=2.0, amplification=1.5)
    bad["answers_after_t0"]["timeout"] = 3
    hostile = _result("hostile", scenario="backend-outage")
    direct = _result(arm="direct")
    text = render_checks([good, direct, bad, hostile])
    lines = text.splitlines()
    n_good, n_bad, n_hostile = (len(check_recovery(r)) for r in (good, bad, hostile))
    assert lines[-1].startswith(
        f"figures: {n_good + n_bad - 2 + n_hostile}/{n_good + n_bad + n_hostile} met"
    )
    assert "(2/3 runs meet every figure)" in lines[-1]
    headers = [line for line in lines if not line.startswith(" ") and line != lines[-1]]
    assert headers == [
        f"reopen \u00d71 sdk: {n_good}/{n_good} met",
        f"reopen \u00d72 sdk-noheader: {n_bad - 2}/{n_bad} met",
        f"backend-outage \u00d71 hostile: {n_hostile}/{n_hostile} met",
    ]
    body = [line for line in lines if line.startswith("  ")]
    assert len(body) == n_good + n_bad + n_hostile
    fails = [line.split()[1] for line in body if line.split()[0] == "FAIL"]
    assert fails == ["amplification", "client"]
    assert all(line.split()[0] in ("PASS", "FAIL") for line in body)


def test_render_checks_marks_invalid_and_unavailable_runs() -> None:
    invalid = _result()
    invalid["validity"] = {"valid": False, "invalid_reasons": ["generator loop lag p99 31 ms"]}
    gone = {"scenario": "two-region", "arm": "sluice", "unavailable": "proxy exited"}
    text = render_checks([invalid, gone])
    assert "INVALID run: generator loop lag p99 31 ms" in text
    assert "two-region: 0/1 met" in text
    n = len(check_recovery(invalid))
    assert text.splitlines()[-1] == (
        f"figures: {n}/{n + 1} met (1/2 runs meet every figure; 1 run(s) INVALID)"
    )


def test_render_checks_without_a_protected_arm() -> None:
    assert render_checks([_result(arm="direct")]) == "figures: 0/0 met (no protected arm ran)"


def test_checks_do_not_mutate_the_result() -> None:
    r = _two_region("sdk")
    before = copy.deepcopy(r)
    render_checks([r])
    assert r == before


# --- the `figures` command and the table's .txt (no load is run: run_scenario is replaced) ----


def test_the_figures_matrix_and_its_restrictions() -> None:
    plan = figures_plan()
    assert len(plan) == 22 and len(set(plan)) == 22
    assert plan[0] == ("reopen", 1.0, "sdk", "") and plan[-1] == ("two-region", 1.0, "sdk", "")
    assert {r.profile for r in plan if r.scenario == "backend-outage" and r.scale == 2.0} == {
        "sdk",
        "sdk-noheader",
        "naive",
        "hostile",
    }
    assert figures_plan(profiles=["naive"]) == [
        ("reopen", 1.0, "naive", ""),
        ("reopen", 2.0, "naive", ""),
        ("backend-outage", 1.0, "naive", ""),
        ("backend-outage", 2.0, "naive", ""),
        ("two-region", 1.0, "naive", ""),
    ]
    # The real SDK: reopen at both capacities, warm and cold.
    assert [(r.scale, r.variant) for r in figures_plan(profiles=["azure-sdk"])] == [
        (1.0, ""),
        (2.0, ""),
        (1.0, "cold"),
        (2.0, "cold"),
    ]
    assert figures_plan(profiles=["azure-sdk"])[-1].label == "reopen \u00d72 azure-sdk cold"
    assert figures_plan(scenarios=["two-region"], scales=[2.0]) == []
    assert len(figures_plan(scales=[2.0])) == 10
    for kwargs in ({"scales": [3.0]}, {"profiles": ["sdk", "bogus"]}, {"scenarios": ["x"]}):
        with pytest.raises(ValueError, match="not in the figures matrix"):
            figures_plan(**kwargs)


def test_figures_command_runs_the_plan_and_writes_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, tuple[str, ...], float, str | None, Path | None]] = []

    def fake_run(
        name: str,
        arms: Sequence[str],
        capacity_scale: float = 1.0,
        profile: str | None = None,
        out_dir: Path | None = None,
        **_: Any,
    ) -> list[dict[str, Any]]:
        calls.append((name, tuple(arms), capacity_scale, profile, out_dir))
        bad = profile == "hostile" and capacity_scale == 2.0
        return [
            _result(profile or "sdk", scenario=name, capacity_scale=capacity_scale)
            | ({"amplification": 2.0, "wasted_fraction": 0.5} if bad else {})
        ]

    monkeypatch.setattr(figures_matrix, "run_scenario", fake_run)
    rc = figures_matrix.figures(tmp_path, scenarios=["reopen"], profiles=["sdk", "hostile"])
    assert rc == 0  # hostile has no drain figures: amplification does not count
    assert [(c[0], c[2], c[3]) for c in calls] == [
        ("reopen", 1.0, "sdk"),
        ("reopen", 1.0, "hostile"),
        ("reopen", 2.0, "sdk"),
        ("reopen", 2.0, "hostile"),
    ]
    assert all(c[1] == ("sluice",) and c[4] == tmp_path / c[3] for c in calls)  # type: ignore[operator]
    summary = (tmp_path / "figures.txt").read_text(encoding="utf-8")
    n = 2 * len(check_recovery(_result("sdk"))) + 2 * len(check_recovery(_result("hostile")))
    assert summary.splitlines()[-1].startswith(f"figures: {n}/{n} met")
    out = capsys.readouterr().out
    assert "4 runs" in out and "expected duration" in out and summary.strip() in out

    calls.clear()
    monkeypatch.setattr(
        figures_matrix,
        "run_scenario",
        lambda name, arms, **kw: [_result(kw["profile"], **{"backlog.succeeded": 1})],
    )
    assert (
        figures_matrix.figures(tmp_path, scenarios=["backend-outage"], profiles=["sdk"], scales=[1])
        == 1
    )
    assert "figures: 9/10 met" in (tmp_path / "figures.txt").read_text(encoding="utf-8")


def test_a_table_with_a_sluice_arm_gets_its_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loadtest.plot

    monkeypatch.setattr(loadtest.plot, "plot_scenario", lambda results, path: None)
    direct = analyze(_synthetic_run())
    scenario_run.write_outputs([direct], tmp_path, echo=False)
    assert "figures" not in (tmp_path / "reopen-naive.txt").read_text(encoding="utf-8")
    protected = analyze(_synthetic_run())
    protected["arm"] = "sluice"
    scenario_run.write_outputs([direct, protected], tmp_path, echo=False)
    text = (tmp_path / "reopen-naive.txt").read_text(encoding="utf-8")
    assert "figures of the sluice arm:" in text
    assert text.rstrip().endswith(render_checks([direct, protected]).splitlines()[-1])
    assert "FAIL  client timeouts" in text


def test_the_harness_judges_answers_by_the_proxys_table() -> None:
    # One table (proxy.contracts.REASONS): every status it allows is explicit, any other is not.
    from proxy.contracts import REASONS

    for reason, statuses in REASONS.items():
        for status in (400, 408, 429, 500, 502, 503, 504):
            assert is_explicit_answer(f"{status} {reason}") is (status in statuses), (
                status,
                reason,
            )
    assert is_explicit_answer("408 bad-request")


def test_cold_runs_are_run_cold_and_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run(name: str, arms: Sequence[str], **kw: Any) -> list[dict[str, Any]]:
        calls.append(kw)
        return [_result(kw["profile"]) | ({"variant": kw["variant"]} if kw["variant"] else {})]

    monkeypatch.setattr(figures_matrix, "run_scenario", fake_run)
    assert figures_matrix.figures(tmp_path, profiles=["azure-sdk"], scales=[1]) == 0
    assert [(c["variant"], c["out_dir"]) for c in calls] == [
        ("", tmp_path / "azure-sdk"),
        ("cold", tmp_path / "azure-sdk-cold"),
    ]
    summary = (tmp_path / "figures.txt").read_text(encoding="utf-8")
    assert "reopen \u00d71 azure-sdk cold: 11/11 met" in summary
    assert scenario_run.VARIANTS["cold"] == {"warmup": scenario_run.COLD_WARMUP}
