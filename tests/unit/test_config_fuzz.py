"""The config loader, fuzzed: whatever the file holds, it loads or raises `ConfigError` (with a
message for each problem), never any other exception.
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import Config, ConfigError, load_config, load_config_data

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "config" / "sluice.yaml").read_text()
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _schema_keys(model: Any, out: set[str]) -> set[str]:
    for name, field in model.model_fields.items():
        out.add(name)
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            _schema_keys(annotation, out)
    return out


# Real key names make the fuzzer reach the validators, not only the unknown-key check.
KEYS = sorted(_schema_keys(Config, set()))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["250ms", "5s", "2m", "0s", "-1s", "1e9h", "http://127.0.0.1:1", "::1/128"]),
    st.sampled_from(["10.0.0.0/33", "x-caller-id", "bad header", "lean", "on", "off", "dry-run"]),
)
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(), st.booleans())
NESTED = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEY, children, max_size=5)
    ),
    max_leaves=30,
)


def check_loads_or_config_error(load: Any, arg: Any) -> None:
    try:
        config = load(arg)
    except ConfigError as exc:
        assert exc.errors, "a ConfigError must say what is wrong"
        assert all(str(e) for e in exc.errors)
        return
    assert isinstance(config, Config)


@pytest.fixture
def path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "sluice.yaml"


@FUZZ
@given(data=NESTED)
def test_random_data_loads_or_raises_config_error(data: Any) -> None:
    check_loads_or_config_error(load_config_data, data)


@FUZZ
@given(
    sections=st.dictionaries(
        st.sampled_from(KEYS), st.dictionaries(st.sampled_from(KEYS), NESTED, max_size=4)
    )
)
def test_random_sections_over_a_valid_base(sections: dict[str, Any]) -> None:
    data = {"upstream": {"url": "http://127.0.0.1:8081"}, **sections}
    check_loads_or_config_error(load_config_data, data)


@FUZZ
@given(
    text=st.text(alphabet=string.printable + "\x00\x85\ufeff\u2028é-:{}[]&*!|>%@`", max_size=300)
)
def test_random_yaml_text_loads_or_raises_config_error(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_loads_or_config_error(load_config, path)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_random_bytes_load_or_raise_config_error(path: Path, raw: bytes) -> None:
    path.write_bytes(raw)
    check_loads_or_config_error(load_config, path)


@FUZZ
@given(data=st.data())
def test_mutated_shipped_config_loads_or_raises_config_error(
    path: Path, data: st.DataObject
) -> None:
    text = SHIPPED
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 20))
        insert = data.draw(st.text(alphabet=string.printable, max_size=12))
        text = text[:at] + insert + text[at + cut :]
    path.write_text(text)
    check_loads_or_config_error(load_config, path)


@FUZZ
@given(data=NESTED)
def test_random_data_as_yaml_file(path: Path, data: Any) -> None:
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    path.write_text(text)
    check_loads_or_config_error(load_config, path)


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['true']\n",  # safe_load refuses to construct it
        "upstream: &a {url: *a}\n",  # a self-referencing anchor
        "[" * 5000,  # deep nesting
        "upstream:\n  url: http://127.0.0.1:1\nlisten: {port: 99999999999999999999999}\n",
        "upstream:\n  url: 'http://[::1'\n",  # urlsplit raises ValueError on this one
        "upstream:\n  url: http://127.0.0.1:1\ntrust: {sources: ['1.2.3.4/99']}\n",
        "upstream:\n  url: http://127.0.0.1:1\nlisten: {header_read_timeout: .inf}\n",
        "\ufeffupstream: {url: http://127.0.0.1:1}\n",
        "",
    ],
)
def test_hostile_yaml_cases(path: Path, text: str) -> None:
    path.write_text(text)
    check_loads_or_config_error(load_config, path)


def test_a_directory_or_missing_file_is_a_config_error(path: Path) -> None:
    check_loads_or_config_error(load_config, path)  # does not exist
    check_loads_or_config_error(load_config, path.parent)  # a directory
