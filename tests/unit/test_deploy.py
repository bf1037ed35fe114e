"""The Dockerfile and the pod manifest keep the properties the sidecar relies on (no Docker
engine runs here, so the files are parsed and checked instead of built).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_slim_python_base() -> None:
    bases = [rest for op, rest in instructions() if op == "FROM"]
    assert bases and all(re.match(r"python:3\.1[1-9]-slim", b) for b in bases)


def test_runs_as_non_root() -> None:
    users = [rest for op, rest in instructions() if op == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_exec_form_entrypoint_with_fixed_config_path() -> None:
    entry = [rest for op, rest in instructions() if op == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form: a JSON array, so signals reach sluice
    assert argv[0] == "sluice"
    assert argv[argv.index("--config") + 1] == "/etc/sluice/sluice.yaml"


def test_healthcheck_hits_sluice_healthz() -> None:
    checks = [rest for op, rest in instructions() if op == "HEALTHCHECK"]
    assert len(checks) == 1 and "/healthz" in checks[0]


def test_pod_manifest_has_sluice_sidecar_and_probes() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "sidecar-pod.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Pod")
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert "sluice" in names and len(names) == 2
    sluice = pod["spec"]["containers"][names.index("sluice")]
    assert sluice["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sluice["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sluice["securityContext"]["readOnlyRootFilesystem"] is True
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    from proxy.config import load_config_data

    load_config_data(yaml.safe_load(config["data"]["sluice.yaml"]))
