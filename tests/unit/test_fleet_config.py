"""The `fleet:` section: defaults (standalone), values accepted, errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, load_config_data


def load(fleet: dict[str, Any]) -> Any:
    return load_config_data({"upstream": {"url": "http://127.0.0.1:8081"}, "fleet": fleet}).fleet


def errors(fleet: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(fleet)
    return [str(e) for e in info.value.errors]


def test_without_the_section_sluice_is_standalone() -> None:
    fleet = load_config_data({"upstream": {"url": "http://127.0.0.1:8081"}}).fleet
    assert fleet.redis is None
    assert (fleet.key_prefix, fleet.service, fleet.instance) == ("sluice", "default", None)
    assert fleet.op_timeout == pytest.approx(0.05)
    assert fleet.tick is None  # the controller's tick


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://user:pw@redis.internal:6380", "unix:///run/r.sock"],
)
def test_redis_urls_that_are_accepted(url: str) -> None:
    assert load({"redis": url}).redis == url


@pytest.mark.parametrize(
    ("fleet", "field"),
    [
        ({"redis": "http://127.0.0.1:6379"}, "fleet.redis"),
        ({"redis": "redis://"}, "fleet.redis"),
        ({"service": "two words"}, "fleet.service"),
        ({"key_prefix": ""}, "fleet.key_prefix"),
        ({"instance": "a/b"}, "fleet.instance"),
        ({"op_timeout": "50"}, "fleet.op_timeout"),
        ({"op_timeout": "0ms"}, "fleet.op_timeout"),
        ({"tick": "0s"}, "fleet.tick"),
        ({"hint_share": 0}, "fleet.hint_share"),
        ({"hint_share": 1.5}, "fleet.hint_share"),
        ({"redsi": "redis://x"}, "fleet.redsi"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_field(fleet: dict[str, Any], field: str) -> None:
    found = errors(fleet)
    assert len(found) == 1 and found[0].startswith(f"{field}: "), found
