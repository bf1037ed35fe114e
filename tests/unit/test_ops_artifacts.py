"""The operating artefacts stay true to the code: the Grafana dashboard and the Prometheus
alert rules under deploy/ query only series a real Sluice exposes (with label values it
really emits), every alert links to a section of docs/runbook.md that exists, and both files
are well-formed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admission.gate import AdmissionGate
from proxy.config import Config, ListenConfig
from proxy.edge.guard import Guard
from proxy.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus-alerts.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"

# Metric names in PromQL: `sluice_` then the rest of the identifier.
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])sluice_[A-Za-z0-9_:]*")
# A selector right after a sluice metric name: sluice_x{a="b", c=~"d|e"}.
SELECTOR_RE = re.compile(r"(?<![A-Za-z0-9_:])(sluice_[A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
# Labels Prometheus adds at scrape time (or relabelling commonly does); not in the exposition.
TARGET_LABELS = {"job", "instance", "pod", "namespace", "container"}
SEVERITIES = {"critical", "warning", "info"}
DURATION_RE = re.compile(r"^(0|(\d+(ms|s|m|h|d|w|y))+)$")


# --- the real exposition --------------------------------------------------------------------
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "unknown": ("",),
}


@cache
def exposition() -> dict[str, dict[str, set[str]]]:
    """Series name -> label name -> values seen, from the registry a running Sluice serves.

    Built as the proxy builds it: `Metrics`, then the admission gate (which binds the mode
    transition and queue-depth-by-priority children) and the connection guard (which
    registers `sluice_bad_input`) on the same registry. A family's series names (with the
    `_total` / `_bucket` / `_sum` / `_count` suffixes) count even when it has no child yet.
    """
    m = Metrics(["orch-a"])
    m.add_fleet()  # what a sidecar of a fleet (`fleet.redis`) serves besides
    config = Config.model_validate(
        {"upstream": {"url": "http://127.0.0.1:1"}, "callers": {"known": [{"name": "orch-a"}]}}
    )
    AdmissionGate(config, m, ["orch-a"])
    Guard(lambda: ListenConfig(), m)
    text = generate_latest(m.registry).decode()
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES[family.type]:
            out.setdefault(family.name + suffix, {})
        for sample in family.samples:
            labels = out.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return out


def metric_names(expr: str) -> set[str]:
    """Every `sluice_*` identifier in a PromQL expression (string literals excluded)."""
    return set(METRIC_RE.findall(_strip_strings(expr)))


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def problems(expr: str) -> list[str]:
    """What in `expr` does not exist in the exposition: metric names, label names, values."""
    known = exposition()
    found = [f"unknown metric {name}" for name in sorted(metric_names(expr)) if name not in known]
    for name, body in SELECTOR_RE.findall(expr):
        if name not in known:
            continue  # already reported
        labels = known[name]
        for matcher in filter(str.strip, _split_matchers(body)):
            match = MATCHER_RE.fullmatch(matcher)
            if match is None:
                found.append(f"{name}: cannot read matcher {matcher!r}")
                continue
            label, op, value = match.groups()
            if label in TARGET_LABELS:
                continue
            if label not in labels:
                found.append(f"{name} has no label {label!r} (has {sorted(labels)})")
                continue
            if "$" in value or op.startswith("!"):
                continue
            if op == "=":
                if value not in labels[label]:
                    found.append(f"{name}{{{label}}} never takes the value {value!r}")
                continue
            for want in value.split("|"):  # =~ "a|b|c": each alternative must occur
                if not any(re.fullmatch(want, have) for have in labels[label]):
                    found.append(f"{name}{{{label}}} never matches {want!r}")
    return found


def _split_matchers(body: str) -> list[str]:
    """Split `a="x,y", b=~"z"` on the commas outside quotes."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in body:
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
    parts.append("".join(current))
    return parts


# --- the files ------------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    """PromQL of every panel target, dashboard annotation and query variable."""
    exprs = [t["expr"] for p in all_panels(doc["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in doc.get("annotations", {}).get("list", []) if "expr" in a]
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"]
    rules = []
    for group in doc["groups"]:
        assert isinstance(group.get("name"), str) and group["name"], group
        assert isinstance(group.get("rules"), list) and group["rules"], group["name"]
        rules += group["rules"]
    return rules


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a Markdown file."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


# --- (a) every series queried exists ------------------------------------------------------
def test_exposition_holds_the_suffixed_names() -> None:
    names = exposition()
    assert "sluice_requests_total" in names and "sluice_requests" not in names
    assert "sluice_upstream_latency_seconds_bucket" in names
    assert "sluice_upstream_latency_seconds" not in names  # a histogram has no bare series
    assert "sluice_bad_input_total" in names
    assert names["sluice_mode"]["mode"] == {"NORMAL", "OUTAGE", "RECOVERY", "SHIELD"}


@pytest.mark.parametrize(
    "expr",
    [
        "rate(sluice_requets_total[5m])",  # typo
        "sluice_upstream_latency_seconds",  # histogram base name: no such series
        "rate(sluice_requests[5m])",  # counter without _total
        'sluice_mode{mode="OUTGAE"}',  # label value never emitted
        'sum(rate(sluice_requests_total{outcome="refused", reson="overload"}[5m]))',
        'rate(sluice_retries_total{decision=~"admitted|refsued"}[5m])',
    ],
)
def test_a_wrong_reference_is_caught(expr: str) -> None:
    assert problems(expr), expr


def test_a_right_reference_passes() -> None:
    expr = (
        'sum by (reason) (rate(sluice_requests_total{job=~"$job", outcome="refused", '
        'reason=~"overload|shield"}[$__rate_interval])) / sluice_limit'
    )
    assert metric_names(expr) == {"sluice_requests_total", "sluice_limit"}
    assert problems(expr) == []
    assert metric_names('up{job=~"sluice_x.*"}') == set()  # inside a string: not a metric


def test_dashboard_queries_only_existing_series() -> None:
    exprs = dashboard_exprs(dashboard())
    used = set().union(*map(metric_names, exprs))
    assert len(used) >= 25, sorted(used)
    found = [f"{p}  in  {e}" for e in exprs for p in problems(e)]
    assert not found, "\n".join(found)


def test_alerts_query_only_existing_series() -> None:
    rules = alert_rules()
    used = set().union(*(metric_names(r["expr"]) for r in rules))
    assert len(used) >= 8, sorted(used)
    found = [f"{r['alert']}: {p}" for r in rules for p in problems(r["expr"])]
    assert not found, "\n".join(found)


# --- (b) alert rules are well-formed and their runbook sections exist ----------------------
def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        name = rule.get("alert")
        assert isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), rule
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), name
        assert isinstance(rule.get("for"), str) and DURATION_RE.match(rule["for"]), name
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert isinstance(annotations.get("summary"), str) and annotations["summary"], name
        assert isinstance(annotations.get("runbook_url"), str), name


def test_the_alerts_the_runbook_promises_exist() -> None:
    names = {r["alert"] for r in alert_rules()}
    expected = {
        "SluiceOutage",
        "SluiceRecoveryTooLong",
        "SluiceShieldActive",
        "SluiceShieldExpiring",
        "SluiceHighShedRatio",
        "SluiceRetryBudgetRefusals",
        "SluiceSpilloverRefused",
        "SluiceUpstreamErrors",
        "SluiceUpstream5xxShare",
        "SluiceConfigReloadFailed",
        "SluiceDown",
        "SluiceLimitAtFloor",
    }
    assert expected <= names, sorted(expected - names)


def test_every_runbook_url_points_at_a_runbook_heading() -> None:
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path.endswith("docs/runbook.md"), url
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/runbook.md"


def test_runbook_internal_links_resolve() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    anchors = github_anchors(text)
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    missing = sorted(set(links) - anchors)
    assert not missing, missing


def test_github_anchor_rules() -> None:
    md = (
        "# Sluice runbook\n## Reading the reason table\n"
        "### `x-sluice-reason`: A, B!\n## Dup\n## Dup\n"
    )
    assert github_anchors(md) == {
        "sluice-runbook",
        "reading-the-reason-table",
        "x-sluice-reason-a-b",
        "dup",
        "dup-1",
    }
    assert "not-a-heading" not in github_anchors("```\n# not a heading\n```\n")


# --- (c) the dashboard is well-formed -----------------------------------------------------
def test_dashboard_is_valid_with_unique_panel_ids() -> None:
    doc = dashboard()
    panels = list(all_panels(doc["panels"]))
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert isinstance(doc.get("uid"), str) and doc["uid"]
    assert 36 <= doc["schemaVersion"] <= 41
    inputs = {i["name"]: i for i in doc.get("__inputs", [])}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"instance"} <= variables
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "$instance" in target["expr"], (panel["title"], target["expr"])


def test_dashboard_covers_the_operating_questions() -> None:
    used = set().union(*map(metric_names, dashboard_exprs(dashboard())))
    for name in (
        "sluice_mode",
        "sluice_mode_transitions_total",
        "sluice_limit",
        "sluice_in_flight",
        "sluice_queue_depth",
        "sluice_queue_wait_seconds_bucket",
        "sluice_requests_total",
        "sluice_upstream_latency_seconds_bucket",
        "sluice_upstream_errors_total",
        "sluice_retry_budget_remaining",
        "sluice_retries_total",
        "sluice_spillover_total",
        "sluice_batches_released_total",
        "sluice_retry_slots_booked_total",
        "sluice_retry_slots_redeemed_total",
        "sluice_config_reloads_total",
        "sluice_upstream_probes_total",
        "sluice_bad_input_total",
        "sluice_upstream_responses_total",
        "sluice_drain_eta_seconds",
        "sluice_drain_backlog",
        "sluice_drain_pace",
        "sluice_build_info",
    ):
        assert name in used, name
    timelines = [p for p in all_panels(dashboard()["panels"]) if p["type"] == "state-timeline"]
    assert any("sluice_mode{" in t["expr"] for p in timelines for t in p["targets"])
