"""The README's operator commands work as written against the config they name: every
`{"mode": ...}` body of the Admin API section, sent to a gate built from the shipped
config/sluice.yaml as the proxy builds it, is accepted (none is answered 400).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from proxy.admission.classify import Classifier
from proxy.config import load_config
from proxy.edge.app import make_gate
from proxy.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "sluice.yaml"
# A flat JSON object whose first key is "mode", as the table and the curl examples write it.
COMMAND_RE = re.compile(r'\{\s*"mode"\s*:[^{}]*\}')


def admin_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Admin API")
    return text[start : text.index("\n## ", start + 1)]


def commands() -> list[dict[str, Any]]:
    found = [json.loads(m.group()) for m in COMMAND_RE.finditer(admin_section())]
    assert found, "no operator command in the README's Admin API section"
    return found


def test_the_shield_example_is_among_them() -> None:
    shields = [c for c in commands() if c["mode"] == "shield"]
    assert shields and all(c.get("allow") for c in shields)
    assert "config/sluice.yaml" in admin_section()  # the config the examples name


@pytest.mark.parametrize("body", commands(), ids=lambda body: json.dumps(body, sort_keys=True))
def test_each_command_is_accepted_by_the_shipped_config(body: dict[str, Any]) -> None:
    config = load_config(SHIPPED)
    names = Classifier(config).caller_names()
    gate = make_gate(config, Metrics(c.name for c in config.callers.known), names)
    params = {k: v for k, v in body.items() if k != "mode"}
    result = gate.command(body["mode"], **params)  # ValueError is what POST /mode answers 400
    if body["mode"] in ("recovery", "shield"):
        assert result["mode"] == body["mode"].upper()
