"""The reload rules (proxy/reload_rules.py): what a reload may change, and why it is refused."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import RESTART_ONLY, Config, load_config_data
from proxy.reload_rules import reload_refusal

from ._admission import merge

BASE: dict[str, Any] = {
    "upstream": {"url": "http://127.0.0.1:8081", "client": "lean"},
    "listen": {"host": "127.0.0.1", "port": 8080, "backlog": 4096},
    "admin": {"host": "127.0.0.1", "port": 9090},
    "lifecycle": {"gc_pacing": True},
    "limiter": {"algorithm": "gradient"},
    "modes": {"protection": "on"},
    "callers": {"known": [{"name": "orch", "cap": 10}, {"name": "repair"}], "fair_buckets": 4},
}


def config(extra: dict[str, Any] | None = None) -> Config:
    return load_config_data(merge(BASE, extra or {}))


def refusal(extra: dict[str, Any]) -> str | None:
    return reload_refusal(config(), config(extra))


def test_the_same_config_reloads() -> None:
    assert reload_refusal(config(), config()) is None


@pytest.mark.parametrize(
    "extra",
    [
        {"logging": {"level": "debug"}},
        {"shedding": {"retry_after_max": "30s"}},
        {"limiter": {"initial": 8}},
        {"upstream": {"read_timeout": "2s"}},
        {"modes": {"protection": "dry-run"}},
        {"callers": {"known": [{"name": "orch", "cap": 2, "weight": 3}, {"name": "repair"}]}},
    ],
    ids=["log-level", "shedding", "limiter-tuning", "upstream-timeout", "dry-run", "caller-cap"],
)
def test_what_the_running_process_can_apply_reloads(extra: dict[str, Any]) -> None:
    assert refusal(extra) is None


# One change per field of config.RESTART_ONLY (the test below checks none is missing).
RESTART_ONLY_CHANGES: dict[str, dict[str, Any]] = {
    "listen.host": {"listen": {"host": "0.0.0.0"}},
    "listen.port": {"listen": {"port": 8081}},
    "listen.backlog": {"listen": {"backlog": 128}},
    "admin.host": {"admin": {"host": "0.0.0.0"}},
    "admin.port": {"admin": {"port": 9091}},
    "lifecycle.gc_pacing": {"lifecycle": {"gc_pacing": False}},
    "limiter.algorithm": {"limiter": {"algorithm": "delivery"}},
}


def test_every_restart_only_field_has_a_change_here() -> None:
    assert set(RESTART_ONLY_CHANGES) == {f"{section}.{name}" for section, name in RESTART_ONLY}


@pytest.mark.parametrize("field", sorted(RESTART_ONLY_CHANGES))
def test_a_restart_only_field_is_refused_and_named(field: str) -> None:
    assert refusal(RESTART_ONLY_CHANGES[field]) == f"these fields need a restart: {field}"


def test_every_restart_only_field_changed_is_named() -> None:
    both = merge(RESTART_ONLY_CHANGES["listen.port"], RESTART_ONLY_CHANGES["admin.port"])
    assert refusal(both) == "these fields need a restart: listen.port, admin.port"


@pytest.mark.parametrize(("old", "new"), [("on", "off"), ("dry-run", "off"), ("off", "on")])
def test_switching_protection_off_or_back_is_refused(old: str, new: str) -> None:
    why = reload_refusal(
        config({"modes": {"protection": old}}), config({"modes": {"protection": new}})
    )
    assert why == "switching modes.protection to or from 'off' needs a restart"


@pytest.mark.parametrize(
    "known",
    [
        [{"name": "orch"}, {"name": "fresh"}],  # renamed
        [{"name": "orch"}, {"name": "repair"}, {"name": "fresh"}],  # added
        [{"name": "orch"}],  # removed
        [{"name": "repair"}, {"name": "orch"}],  # reordered: every index moves
    ],
    ids=["renamed", "added", "removed", "reordered"],
)
def test_changing_the_caller_names_is_refused(known: list[dict[str, Any]]) -> None:
    why = refusal({"callers": {"known": known}})
    assert why == "changing callers.known names or fair_buckets needs a restart"


def test_changing_the_number_of_fair_buckets_is_refused() -> None:
    why = refusal({"callers": {"fair_buckets": 8}})
    assert why == "changing callers.known names or fair_buckets needs a restart"


@pytest.mark.parametrize(
    "upstream",
    [{"url": "http://127.0.0.1:8082"}, {"client": "aiohttp"}],
    ids=["url", "client"],
)
def test_changing_the_upstream_url_or_client_is_refused(upstream: dict[str, Any]) -> None:
    why = refusal({"upstream": upstream})
    assert why == "changing upstream.url or upstream.client needs a restart"


def test_the_first_broken_rule_is_the_reason_given() -> None:
    callers_and_upstream = {"callers": {"fair_buckets": 8}, "upstream": {"client": "aiohttp"}}
    assert refusal(callers_and_upstream) == (
        "changing callers.known names or fair_buckets needs a restart"
    )
    everything = {**callers_and_upstream, "listen": {"port": 8081}}
    assert refusal(everything) == "these fields need a restart: listen.port"


@pytest.mark.parametrize(
    "tls",
    [{"verify": False}, {"server_name": "backend.internal"}],
    ids=["verify", "server-name"],
)
def test_changing_the_upstream_tls_settings_is_refused(tls: dict[str, Any]) -> None:
    https = {"upstream": {"url": "https://127.0.0.1:8443"}}
    why = reload_refusal(config(https), config(merge(https, {"upstream": {"tls": tls}})))
    assert why == "changing upstream.tls needs a restart"


@pytest.mark.parametrize(
    "fleet",
    [
        {"redis": "redis://127.0.0.1:6379/0"},
        {"service": "other"},
        {"op_timeout": "80ms"},
        {"hint_share": 0.5},
    ],
    ids=["redis", "service", "op-timeout", "hint-share"],
)
def test_changing_the_fleet_section_is_refused(fleet: dict[str, Any]) -> None:
    assert refusal({"fleet": fleet}) == "changing fleet needs a restart"
