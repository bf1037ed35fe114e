"""A rollout ends every request by Sluice's own drain, never by a SIGKILL: in the pod manifest,
Sluice's preStop plus the drain (its config's `drain_timeout`, and the 0.5 s the exit may take
past it) fit inside `terminationGracePeriodSeconds`, for the ConfigMap's config and for the
image's own (config/sluice.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_config, load_config_data

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "sidecar-pod.yaml"
EXIT_AFTER_DEADLINE = 0.5  # Sluice's promise: exit within drain_timeout + 0.5 s


def documents() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(MANIFEST.read_text()))


def sluice_container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "sluice")


def pre_stop_seconds(container: dict[str, Any]) -> float:
    """How long the preStop hook holds SIGTERM back (its sleep action, or `sleep N` exec)."""
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", f"cannot tell how long preStop takes: {command}"
    return float(command[1])


def shutdown_fits(container: dict[str, Any], grace_period: float, drain_timeout: float) -> bool:
    return pre_stop_seconds(container) + drain_timeout + EXIT_AFTER_DEADLINE < grace_period


def pod_and_configmap() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = documents()
    pod = next(d for d in docs if d["kind"] == "Pod")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    return pod, config_map


@pytest.mark.parametrize("source", ["configmap", "config/sluice.yaml"])
def test_pre_stop_and_drain_fit_in_the_termination_grace_period(source: str) -> None:
    pod, config_map = pod_and_configmap()
    if source == "configmap":
        config = load_config_data(yaml.safe_load(config_map["data"]["sluice.yaml"]))
    else:
        config = load_config(ROOT / "config" / "sluice.yaml")
    container = sluice_container(pod)
    grace_period = float(pod["spec"]["terminationGracePeriodSeconds"])
    assert pre_stop_seconds(container) > 0, "no preStop delay before SIGTERM"
    assert shutdown_fits(container, grace_period, config.lifecycle.drain_timeout), (
        f"preStop {pre_stop_seconds(container)}s + drain_timeout "
        f"{config.lifecycle.drain_timeout}s + {EXIT_AFTER_DEADLINE}s is not under "
        f"terminationGracePeriodSeconds {grace_period}"
    )
    assert 0 < config.lifecycle.grace < config.lifecycle.drain_timeout


def test_the_relation_is_strict_and_counts_every_part() -> None:
    # The check itself can fail: a preStop or a drain that eats the grace period is refused.
    container = {"lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}
    assert shutdown_fits(container, 30, 20)
    assert not shutdown_fits(container, 30, 24.5)  # 5 + 24.5 + 0.5 = 30: SIGKILL races the exit
    assert not shutdown_fits({"lifecycle": {"preStop": {"sleep": {"seconds": 10}}}}, 30, 20)
    exec_hook = {"lifecycle": {"preStop": {"exec": {"command": ["sleep", "12"]}}}}
    assert not shutdown_fits(exec_hook, 30, 20)
