"""The harness's terminal table, scenario files and import hygiene."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loadtest
from loadtest.analysis import analyze
from loadtest.report import fmt_ms, fmt_pct, render_table
from loadtest.scenario import (
    ScenarioError,
    list_scenarios,
    load_scenario,
    parse_duration,
    sluice_config_path,
)

from .test_loadtest_stats import _synthetic_run

LOADTEST_DIR = Path(loadtest.__file__).parent


def test_table_puts_arms_side_by_side_with_every_answer() -> None:
    direct = analyze(_synthetic_run())
    protected = analyze(_synthetic_run())
    protected["arm"] = "sluice"
    protected["answers"] = {"200": 9, "503 overload": 3, "429 retry-budget": 2}
    unavailable = {"scenario": "reopen", "arm": "passthrough", "unavailable": "proxy exited\n..."}
    table = render_table([direct, unavailable, protected])
    lines = table.splitlines()
    header = next(line for line in lines if line.strip().startswith("direct"))
    assert header.split() == ["direct", "passthrough", "sluice"]
    for label in (
        "goodput, last 2 s",
        "backlog succeeded",
        "backlog drain",
        "fresh success after t0",
        "fresh p50 / p99 after t0 (ms)",
        "amplification",
        "wasted work",
        "peak queue behind workers (east)",
        "  503 overload",
        "  429 retry-budget",
        "  404 -",
        "  timeout",
        "  connection-error",
        "generator loop lag p99",
    ):
        assert any(line.startswith(label) for line in lines), label
    timeout_row = next(line for line in lines if line.startswith("  timeout"))
    assert timeout_row.split()[1:] == ["2", "unavailable", "0"]
    assert "passthrough: unavailable (proxy exited)" in table
    assert "INVALID" in table  # the synthetic run's lag sample is over 20 ms


def test_table_when_nothing_ran() -> None:
    text = render_table([{"scenario": "reopen", "arm": "sluice", "unavailable": "no gate"}])
    assert "no arm could run" in text and "no gate" in text


def test_formatters() -> None:
    assert fmt_pct(0.1234) == "12.3%"
    assert fmt_pct(None) == "—"
    assert fmt_ms(3.14159) == "3.1"
    assert fmt_ms(1234.5) == "1234"


def test_shipped_scenarios_load_and_have_a_sluice_config() -> None:
    names = list_scenarios()
    assert {"reopen", "backend-outage", "two-region"} <= set(names)
    for name in names:
        _, path = load_scenario(name)
        assert sluice_config_path(path).exists(), name


@pytest.mark.parametrize("name", ["reopen", "backend-outage", "two-region"])
def test_sluice_configs_are_valid_and_state_no_capacity(name: str) -> None:
    from proxy.config import load_config

    sc, path = load_scenario(name)
    config = load_config(sluice_config_path(path))
    # The limit must be learned: no caller caps, and no limiter bound equal to the workers.
    assert all(c.cap is None for c in config.callers.known)
    assert config.callers.default_cap is None
    workers = sc.backend.workers
    assert workers not in (config.limiter.initial, config.limiter.ceiling)
    # Callers named in the scenario are the ones Sluice knows.
    assert {c.name for c in config.callers.known} == {c.name for c in sc.clients.callers}


def test_capacity_scale_scales_workers_and_the_storm() -> None:
    sc, _ = load_scenario("two-region")
    double = sc.scaled(2)
    assert double.backend.workers == 2 * sc.backend.workers
    assert double.backend.capacity == pytest.approx(2 * sc.backend.capacity)
    assert double.traffic.backlog == 2 * sc.traffic.backlog
    assert double.fresh_rate("west") == pytest.approx(2 * sc.fresh_rate("west"))
    assert double.backend.service_time == sc.backend.service_time
    assert double.timing == sc.timing


def test_scenario_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrigger: reopen\nclients: {callers: [{name: a}], profil: sdk}\n")
    with pytest.raises(ScenarioError, match=r"clients\.profil"):
        load_scenario(str(bad))
    with pytest.raises(ScenarioError, match="no scenario"):
        load_scenario("does-not-exist")
    with pytest.raises(ValueError, match="unit"):
        parse_duration(5)
    assert parse_duration("250ms") == pytest.approx(0.25)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_locust_never_shares_a_process_with_uvloop() -> None:
    """Locust (gevent) lives only in locustfile.py; nothing else in the harness imports it."""
    locustfile = LOADTEST_DIR / "locustfile.py"
    assert locustfile.exists()
    assert "locust" in _imports(locustfile)
    assert "uvloop" not in _imports(locustfile)
    assert "loadtest" not in _imports(locustfile)
    for path in LOADTEST_DIR.glob("*.py"):
        if path.name != "locustfile.py":
            assert "locust" not in _imports(path), path.name
            assert "locustfile" not in path.read_text(encoding="utf-8").replace(
                "locustfile.py", ""
            ), path.name
