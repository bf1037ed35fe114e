"""The fleet replay's pure parts (issue 18): the HAProxy config, the capacity split, the fleet's
figures, its table and its command line; no processes."""

from __future__ import annotations

import re
from typing import Any

import prometheus_client
import pytest

from loadtest import balancer as lb
from loadtest.analysis import analyze
from loadtest.figures import checks_for
from loadtest.fleet_cli import fleet_of_run
from loadtest.fleet_table import plan_grid
from loadtest.fleet_table_rows import render_rows, row_of
from loadtest.lb_analysis import (
    mode_seconds,
    returns_doc,
    sidecar_counters,
    spread,
    waiting_until,
)
from loadtest.report import render_table
from loadtest.run_data import RunData
from proxy.contracts import Reason
from proxy.ops.metrics import Metrics

from .test_loadtest_stats import _synthetic_run

SERVERS = [lb.Server("east-0", 4001, 4), lb.Server("east-1", 4002, 3), lb.Server("east-2", 4003, 3)]


def _lines(cfg: str) -> list[str]:
    return [line.strip() for line in cfg.splitlines()]


@pytest.mark.parametrize("balance", lb.LB_ALGORITHMS)
def test_haproxy_config_has_the_options_the_issue_names(balance: str) -> None:
    cfg = lb.haproxy_config(9000, SERVERS, balance, lb.haproxy_timeout(1.0))
    lines = _lines(cfg)
    assert f"balance {balance}" in lines
    assert "option forwardfor" in lines
    assert "retries 0" in lines
    assert "no option redispatch" in lines
    assert "option http-keep-alive" in lines
    assert "mode http" in lines
    assert "bind 127.0.0.1:9000" in lines
    servers = [line for line in lines if line.startswith("server ")]
    assert [s.split()[1:3] for s in servers] == [
        ["east-0", "127.0.0.1:4001"],
        ["east-1", "127.0.0.1:4002"],
        ["east-2", "127.0.0.1:4003"],
    ]
    for s in servers:  # no per-server queue, no checks, no stickiness
        assert not re.search(r"\b(maxconn|check|cookie|track)\b", s), s
    assert not any(line.startswith(("stick", "cookie", "option redispatch")) for line in lines)
    assert [s.split()[-1] for s in servers] == ["4", "3", "3"]  # weighted by workers


def test_haproxy_waits_longer_than_any_client() -> None:
    cfg = lb.haproxy_config(9000, SERVERS, "roundrobin", lb.haproxy_timeout(2.0))
    waits = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"timeout (client|server|http-request|http-keep-alive) (\d+)s", cfg)
    }
    assert set(waits) == {"client", "server", "http-request", "http-keep-alive"}
    assert min(waits.values()) > lb.CLIENT_WAIT_MAX  # the real SDK's read timeout
    # Only the global and frontend limits, far above a run's connections.
    assert [int(n) for n in re.findall(r"maxconn (\d+)", cfg)] == [lb.MAX_CONN, lb.MAX_CONN]


def test_haproxy_config_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="balance"):
        lb.haproxy_config(9000, SERVERS, "source", 330.0)
    with pytest.raises(ValueError, match="server"):
        lb.haproxy_config(9000, [], "roundrobin", 330.0)


@pytest.mark.parametrize(("total", "k"), [(10, 1), (10, 3), (10, 5), (7, 7), (1000, 3)])
def test_split_keeps_the_sum_and_differs_by_at_most_one(total: int, k: int) -> None:
    parts = lb.split_evenly(total, k)
    assert len(parts) == k and sum(parts) == total
    assert max(parts) - min(parts) <= 1 and min(parts) >= 1
    assert parts == sorted(parts, reverse=True)  # the remainder goes to the first members


def test_split_refuses_empty_members() -> None:
    with pytest.raises(ValueError, match="cannot be split"):
        lb.split_evenly(2, 3)
    with pytest.raises(ValueError, match="at least one"):
        lb.split_evenly(10, 0)


def test_member_names() -> None:
    assert lb.member_names("east", 3) == ["east-0", "east-1", "east-2"]


def _metrics_text() -> str:
    """A sidecar's real exposition with a few counters moved."""
    m = Metrics(["orchestrator-a"])
    m.forwarded.inc(7)
    m.refused[Reason.OVERLOAD].inc(3)
    m.refused[Reason.RETRY_BUDGET].inc(2)
    m.slots_booked.inc(5)
    m.slots_redeemed.inc(1)
    m.retry_admitted["orchestrator-a"].inc(4)
    m.retry_refused["orchestrator-a"].inc(2)
    return prometheus_client.generate_latest(m.registry).decode()


def test_sidecar_counters_read_a_real_exposition() -> None:
    c = sidecar_counters(_metrics_text())
    assert c["requests"]["forwarded"] == 7
    assert c["requests"]["refused overload"] == 3
    assert c["requests"]["refused retry-budget"] == 2
    assert (c["slots_booked"], c["slots_redeemed"]) == (5, 1)
    assert c["retries"] == {"admitted": 4, "refused": 2}


def test_returns_are_summed_over_the_sidecars() -> None:
    sidecars = {
        "east-0": {
            "slots_booked": 10,
            "slots_redeemed": 4,
            "counters": {"retries": {"refused": 3}},
        },
        "east-1": {
            "slots_booked": 30,
            "slots_redeemed": 6,
            "counters": {"retries": {"refused": 1}},
        },
    }
    doc = returns_doc(sidecars)
    assert (doc["booked"], doc["redeemed"]) == (40, 10)
    assert doc["redeemed_share"] == pytest.approx(0.25)
    assert doc["unsolicited_retries"] == {"refused": 4}


def test_spread_and_the_backlog_wait() -> None:
    assert spread([100.0, 110.0]) == pytest.approx(0.1)
    assert spread([100.0, None]) is None and spread([0.0, 1.0]) is None
    # 10 workflows: the wait ends when 9 have finished (all but 10 %).
    backlog = [[i, 1, 0, 0, 0.0, 1.0 + i, 1, 1] for i in range(10)]
    assert waiting_until(backlog, 0.0, 100.0) == pytest.approx(9.0)
    backlog[5][5] = None  # only 9 finished, the 9th at 10.0
    assert waiting_until(backlog, 0.0, 100.0) == pytest.approx(10.0)
    backlog[6][5] = None  # 8 finished: still waiting at the end
    assert waiting_until(backlog, 0.0, 100.0) == 100.0


def test_mode_seconds_hold_each_mode_until_the_next_sample() -> None:
    samples = [(0.0, {"mode": "NORMAL"}), (1.0, {"mode": "RECOVERY"}), (3.5, {"mode": "NORMAL"})]
    assert mode_seconds(samples, 0.5) == {"RECOVERY": 2.5}
    assert mode_seconds(samples, 0.0) == {"NORMAL": 1.0, "RECOVERY": 2.5}


def _fleet_run() -> RunData:
    """The synthetic reopen run with its backend split in two members, each with a sidecar
    behind a round-robin balancer: east-0 served 3 of the completions, east-1 the rest."""
    run = _synthetic_run()
    one = run.backends["east"]
    comps = one["completions"]
    members: dict[str, dict[str, Any]] = {}
    for i, part in enumerate((comps[:3], comps[3:])):
        members[f"east-{i}"] = one | {"config": {"workers": 5}, "completions": part}
    members["east-1"]["peak_queue"] = 6  # over its 5 workers
    run.backends = members
    run.members = {"east": ["east-0", "east-1"]}
    run.lb = "roundrobin"
    run.arm = "sluice"
    status = {"mode": "RECOVERY", "limit": 5, "pace_rps": 90.0}
    run.proxy_samples = {m: [(10.0, status), (12.0, status | {"mode": "NORMAL"})] for m in members}
    run.proxy_final = {m: {"slots": {"total_booked": 8, "redeemed": 2}} for m in members}
    run.proxy_metrics = {m: sidecar_counters(_metrics_text()) for m in members}
    return run


def test_a_fleet_run_has_its_figures_table_and_checks() -> None:
    r = analyze(_fleet_run())
    assert r["params"]["fleet"] == 2 and r["params"]["member_workers"] == [5, 5]
    fleet = r["lb"]
    assert fleet["k"] == 2 and fleet["lb"] == "roundrobin"
    # Backlog ends at 11.0 and 12.0: the wait is t0 (10) to 12; completions in [10, 12).
    assert fleet["waiting_s"] == [0.0, 2.0]
    assert [m["served"] for m in fleet["members"].values()] == [1, 1]
    assert fleet["returns"]["booked"] == 16 and fleet["returns"]["redeemed"] == 4
    assert fleet["sidecars"]["east-0"]["modes_s"] == {"RECOVERY": 2.0}
    assert r["backends"]["east-0"]["workers"] == 5
    figures = {c.figure: c for c in checks_for(r)}
    assert figures["peak queue behind workers (east-1)"].ok is False
    assert figures["peak queue behind workers (east-0)"].ok is False  # 7 > 5
    assert "backends' served per worker, max/min - 1" in figures
    table = render_table([r])
    assert "fleet of 2 (5 + 5 workers) behind HAProxy roundrobin" in table
    assert "sidecar east-1: slots redeemed / booked" in table
    assert "fleet: return slots redeemed / booked" in table


def test_the_fleet_table_row() -> None:
    r = analyze(_fleet_run())
    row = row_of(r, 2, "roundrobin")
    assert row["queue"] == "7/5" and row["returns"] == "4/16 (25%)"
    assert row["unsolicited"] == "8/4"
    assert row["verdict"] == "VOID"  # the synthetic generator lagged 30 ms
    text = render_rows([row, row_of({"scenario": "reopen", "arm": "sluice", "unavailable": "x"},
                                    3, "leastconn")])  # fmt: skip
    assert text.splitlines()[0].split()[:5] == ["K", "lb", "scenario", "profile", "arm"]
    assert "VOID / unavailable runs:" in text and "unavailable: x" in text


def test_the_grid_runs_one_lb_at_k1_and_refuses_two_regions() -> None:
    plan = plan_grid([1, 3], ["roundrobin", "leastconn"], ["reopen"], ["sdk", "naive"], ["sluice"])
    assert [(g.k, g.lb) for g in plan] == [(1, "roundrobin")] * 2 + [
        (3, "roundrobin"),
        (3, "roundrobin"),
        (3, "leastconn"),
        (3, "leastconn"),
    ]
    assert plan[0].folder == "k1-roundrobin/reopen-sdk"
    with pytest.raises(ValueError, match="single-region"):
        plan_grid([3], ["roundrobin"], ["two-region"], ["sdk"], ["sluice"])
    with pytest.raises(ValueError, match="--lb"):
        plan_grid([3], ["random"], ["reopen"], ["sdk"], ["sluice"])


def test_a_run_without_fleet_options_is_todays_single_instance(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert fleet_of_run(None, None, "reopen") == (1, None)
    assert fleet_of_run([1], None, "reopen") == (1, None)
    assert fleet_of_run([3], ["leastconn", "roundrobin"], "reopen") == (0, None)
    assert fleet_of_run([3], None, "two-region") == (0, None)
    assert "single-region" in capsys.readouterr().err


def test_an_outage_run_is_not_void_for_a_release_it_never_had() -> None:
    r = analyze(_fleet_run())
    r["validity"] = {"valid": True, "invalid_reasons": [], "loop_lag_max_ms": 5.0}
    r["backlog"]["release_prepared"] = 0  # nothing is prepared when nothing is released
    r["params"]["trigger"] = "outage"
    assert row_of(r, 2, "roundrobin")["verdict"] == "valid"
    r["params"]["trigger"] = "reopen"
    assert row_of(r, 2, "roundrobin")["why"] == "release: 0 of 2 backlog requests prepared"
