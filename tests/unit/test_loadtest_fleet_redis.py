"""The fleet replay with shared state (issue 18, `--fleet-redis`, `--redis-kill-at`): the
redis-server command line, each sidecar's `fleet:` section as Sluice loads it, the options'
checks, and what a run with shared state and a Redis fault reports (pure; no processes: the
fault's effect on Sluice is tests/integration/test_fleet.py's)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest import fleet_redis as fr
from loadtest.analysis import analyze
from loadtest.arm_children import write_proxy_config
from loadtest.fault_figures import fault_checks
from loadtest.figures import checks_for
from loadtest.fleet_cli import redis_of_args
from loadtest.fleet_shared import fault_doc, link_changes, sidecar_fleet
from loadtest.fleet_table_rows import row_of
from loadtest.report import render_table
from loadtest.run_data import RunData
from loadtest.runner import ArmPlan
from loadtest.scenario import load_scenario
from proxy.config import load_config

from .test_loadtest_balancer import _fleet_run

SCENARIOS = Path(__file__).resolve().parents[2] / "loadtest" / "scenarios"


def test_redis_server_persists_nothing_on_loopback_and_is_bounded() -> None:
    argv = fr.redis_argv("/usr/bin/redis-server", 6399, Path("/tmp/x"), 95.4)
    assert argv[:4] == ["timeout", "-k", "5", "95"]  # coreutils timeout: its lifetime bound
    assert argv[4] == "/usr/bin/redis-server"
    pairs = {argv[i]: argv[i + 1] for i in range(5, len(argv) - 1, 2)}
    assert pairs["--port"] == "6399" and pairs["--bind"] == "127.0.0.1"
    assert pairs["--save"] == "" and pairs["--appendonly"] == "no"
    assert pairs["--daemonize"] == "no" and pairs["--dir"] == "/tmp/x"
    assert fr.redis_url(6399) == "redis://127.0.0.1:6399/0"


def test_each_sidecar_gets_a_fleet_section_sluice_accepts(tmp_path: Path) -> None:
    url = fr.redis_url(6399)
    own = fr.sidecar_overrides(["east-0", "east-1"], url)
    assert set(own) == {"east-0", "east-1"}
    cfgs = []
    for i, name in enumerate(own):
        path = write_proxy_config(
            SCENARIOS / "reopen.sluice.yaml",
            tmp_path / f"{name}.yaml",
            port=7000 + i,
            upstream_port=7100 + i,
            admin_port=7200 + i,
            region="east",
            protection="on",
            overrides={"trust": {"sources": ["127.0.0.1/32"]}, **own[name]},
        )
        cfgs.append(load_config(path))
    assert [c.fleet.redis for c in cfgs] == [url, url]
    assert [c.fleet.instance for c in cfgs] == ["east-0", "east-1"]
    assert {c.fleet.service for c in cfgs} == {fr.FLEET_SERVICE}  # one fleet
    assert all(c.trust.sources for c in cfgs)  # the shared overrides are kept beside it


def test_the_options_are_checked_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fr.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert fr.RedisPlan().check(fleet=False) is None  # standalone, the default
    assert fr.RedisPlan(True).check(fleet=True) is None
    assert fr.RedisPlan(True, 2.0, 5.0).check(fleet=True) is None
    assert "needs --fleet-redis" in (fr.RedisPlan(False, 2.0).check(fleet=True) or "")
    assert "--fleet K --lb" in (fr.RedisPlan(True).check(fleet=False) or "")
    assert "≥ 0" in (fr.RedisPlan(True, -1.0).check(fleet=True) or "")
    assert "≥ 0" in (fr.RedisPlan(True, 2.0, 0.0).check(fleet=True) or "")
    monkeypatch.setattr(fr.shutil, "which", lambda name: None)
    assert fr.RedisPlan(True).check(fleet=True) == fr.REDIS_MISSING
    assert "apt-get install redis-server" in fr.REDIS_MISSING


def test_the_command_line_makes_the_plan(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fr.shutil, "which", lambda name: f"/usr/bin/{name}")
    ns = argparse.Namespace(fleet_redis=True, redis_kill_at=3.0, redis_restart_after=5.0)
    assert redis_of_args(ns, True) == fr.RedisPlan(True, 3.0, 5.0)
    ns = argparse.Namespace(fleet_redis=False, redis_kill_at=3.0, redis_restart_after=5.0)
    assert redis_of_args(ns, True) is None
    assert "needs --fleet-redis" in capsys.readouterr().err


def test_a_shared_run_is_named_apart() -> None:
    sc, path = load_scenario("reopen")
    plan = ArmPlan(sc, path, "sluice", 1, 1.0, Path("/tmp"), fleet=3, lb="roundrobin")
    assert plan.tag == "reopen-k3-roundrobin-sluice"
    plan.redis = fr.RedisPlan(True)
    assert plan.tag == "reopen-k3-roundrobin-redis-sluice"


def _fleet_status(up: bool, foreign: int = 0) -> dict[str, object]:
    return {
        "redis_up": up,
        "peers": [{"instance": "east-1", "mode": "RECOVERY", "seen_s_ago": 0.1}],
        "exchanges": {"ok": 40, "failed": 3},
        "sent": {"booking": 5},
        "received": {"booking": 7},
        "unshared": 0,
        "slots": {"foreign": 7, "redeemed_foreign": foreign, "closed_by_peers": 2},
    }


def test_a_sidecars_link_and_its_peers_slots() -> None:
    samples = [
        (9.0, {"mode": "NORMAL", "fleet": _fleet_status(True)}),
        (11.0, {"mode": "RECOVERY", "fleet": _fleet_status(False)}),
        (11.5, {"mode": "RECOVERY", "fleet": _fleet_status(False)}),
        (13.0, {"mode": "RECOVERY", "fleet": _fleet_status(True)}),
        (13.5, {"mode": "NORMAL"}),  # a sample without the block says nothing of the link
    ]
    assert link_changes(samples, 10.0) == [(-1.0, True), (1.0, False), (3.0, True)]
    doc = sidecar_fleet(samples, {"fleet": _fleet_status(True, foreign=4)}, 10.0)
    assert doc is not None
    assert (doc["peers"], doc["slots_foreign"], doc["redeemed_foreign"]) == (1, 7, 4)
    assert doc["exchanges"] == {"ok": 40, "failed": 3}
    assert sidecar_fleet(samples, {"mode": "NORMAL"}, 10.0) is None  # standalone


def _shared_run(kill: bool) -> RunData:
    """The synthetic fleet run with shared state; with `kill`, Redis killed at 11.0, restarted
    at 12.0 and answering at 12.1 (the fault's window: [11.0, 14.1))."""
    run = _fleet_run()
    events = [("kill", 11.0), ("restart", 12.0), ("accepting", 12.1)] if kill else []
    gauges = {m: [(10.5, 1.0), (11.5, 0.0), (12.5, 1.0)] for m in run.proxy_samples}
    run.redis = {"url": fr.redis_url(6399), "events": events, "redis_up_metric": gauges}
    run.proxy_final = {
        m: doc | {"fleet": _fleet_status(True, foreign=1)} for m, doc in run.proxy_final.items()
    }
    return run


def test_the_fault_window_against_the_rest() -> None:
    run = _shared_run(kill=True)
    fleet = run.fleet
    doc = fault_doc(
        run.redis["events"] if run.redis else [],
        fleet["workflows"],
        fleet["attempts"],
        {"east-0": [(10.5, 1.0), (11.5, 0.0), (12.5, 1.0)]},
        10.0,
        18.0,
    )
    assert doc is not None
    assert doc["events_s"] == {"kill": 1.0, "restart": 2.0, "accepting": 2.1}
    assert doc["window_s"] == [1.0, 4.1]
    # Sent in [11.0, 14.1): (2,1) 200, (4,0) 503 overload, (4,1) 200, (5,0) timeout.
    assert doc["attempts_during"]["n"] == 4
    assert doc["attempts_during"]["answers"] == {"200": 2, "503 overload": 1, "timeout": 1}
    # From t0, the rest: (2,0) timeout, (3,0) 404 -, (6,0) 200.
    assert doc["attempts_rest"]["n"] == 3
    assert doc["fresh_during"]["n"] == 2 and doc["fresh_rest"]["n"] == 0
    assert doc["redis_up_metric"] == {"east-0": [(0.5, 1.0), (1.5, 0.0), (2.5, 1.0)]}
    assert fault_doc([], fleet["workflows"], fleet["attempts"], {}, 10.0, 18.0) is None


def test_a_fault_run_is_judged_on_its_own_figures() -> None:
    r = analyze(_shared_run(kill=True))
    assert r["fleet_redis"]["shared"] is True
    assert r["lb"]["returns"]["redeemed_foreign"] == 2  # one per sidecar
    figures = {c.figure: c for c in checks_for(r)}
    timeouts = figures["Redis fault: non-200 sent in [1.0, 4.1] s"]
    assert timeouts.ok is False and "1 timeout/conn" in timeouts.measured
    assert figures["Redis fault: sluice_fleet_redis_up 0 then 1"].ok is True
    assert "Redis fault: backlog drain" in figures
    table = render_table([r])
    assert "fleet: shared state" in table and "Redis fault: events (s from t0)" in table
    assert "sidecar east-0: sluice_fleet_redis_up (s from t0)" in table
    assert row_of(r, 2, "roundrobin")["state"] == "redis"


def test_the_gauge_must_come_back() -> None:
    r = analyze(_shared_run(kill=True))
    r["fleet_redis"]["fault"]["redis_up_metric"]["east-1"] = [(0.5, 1.0), (1.5, 0.0)]
    check = {c.figure: c for c in fault_checks(r)}["Redis fault: sluice_fleet_redis_up 0 then 1"]
    assert check.ok is False and "east-1" in check.measured


def test_without_redis_nothing_is_shared_and_no_fault_is_judged() -> None:
    r = analyze(_fleet_run())
    assert r["fleet_redis"] == {"shared": False}
    assert fault_checks(r) == []
    assert row_of(r, 2, "roundrobin")["state"] == "local"
    assert "none (each sidecar alone)" in render_table([r])
    shared = analyze(_shared_run(kill=False))
    assert shared["fleet_redis"] == {"shared": True, "fault": None}
    assert fault_checks(shared) == []
