"""`lifecycle.drain_grace`: part of `drain_timeout`, by default a quarter of it (at most 5 s),
and refused, naming the field, when it would be as long as the drain.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, load_config_data


def lifecycle(**values: str) -> Any:
    data = {"upstream": {"url": "http://127.0.0.1:1"}, "lifecycle": values}
    return load_config_data(data).lifecycle


def test_the_default_grace_is_a_quarter_of_the_drain_at_most_five_seconds() -> None:
    assert lifecycle().grace == 5.0  # drain_timeout 20s
    assert lifecycle(drain_timeout="3s").grace == 0.75
    assert lifecycle(drain_timeout="60s").grace == 5.0
    assert lifecycle(drain_timeout="3s", drain_grace="0s").grace == 0.0
    assert lifecycle(drain_timeout="3s", drain_grace="2s").grace == 2.0


@pytest.mark.parametrize("grace", ["3s", "10s"])
def test_a_grace_as_long_as_the_drain_is_refused_naming_the_field(grace: str) -> None:
    with pytest.raises(ConfigError) as err:
        lifecycle(drain_timeout="3s", drain_grace=grace)
    [error] = err.value.errors
    assert error.path == "lifecycle.drain_grace"
    assert "shorter than drain_timeout" in error.message
