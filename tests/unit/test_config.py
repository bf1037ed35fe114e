"""Config loading: every error names its field; durations; unknown keys; restart-only fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from proxy.config import (
    Config,
    ConfigError,
    load_config,
    load_config_data,
    parse_duration,
    restart_only_changes,
)
from proxy.edge.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASE = {"upstream": {"url": "http://127.0.0.1:8081"}}


def errors_of(data: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config_data(data)
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (" 10ms ", 0.01)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5", 5, "5 sec", "-1s", "ms", True, None, "1d"])
def test_bad_durations_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_shipped_configs_are_valid() -> None:
    for path in sorted((ROOT / "config").glob("*.yaml")):
        load_config(path)


def test_missing_upstream_named() -> None:
    assert errors_of({}) == {"upstream": "required field is missing"}


def test_a_deprecated_key_is_ignored_with_a_warning_not_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import proxy.config as config_module

    monkeypatch.setattr(
        config_module, "DEPRECATED", {"limiter.growth": "the limit grows by probing now"}
    )
    data = {**BASE, "limiter": {"growth": 3.0, "initial": 8}}
    config = load_config_data(data)
    assert config.limiter.initial == 8  # the rest of the section still applies
    assert config.deprecations == (
        "limiter.growth is deprecated and ignored: the limit grows by probing now",
    )
    assert data["limiter"] == {"growth": 3.0, "initial": 8}  # the caller's data untouched
    assert load_config_data(BASE).deprecations == ()
    # check-config passes, and says so on stderr
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(path)]) == 0
    assert "limiter.growth is deprecated" in capsys.readouterr().err
    # a key not in the table is still an error
    assert "limiter.grwoth" in errors_of({**BASE, "limiter": {"grwoth": 3.0}})


def test_limiter_growth_is_deprecated_not_refused() -> None:
    # Gone with the step growth (issue 16): a running config that sets it still loads.
    config = load_config_data({**BASE, "limiter": {"growth": 2.0, "knee_growth": 3.0}})
    assert config.limiter.knee_growth == 3.0
    assert len(config.deprecations) == 1 and "limiter.growth" in config.deprecations[0]


def test_unknown_key_named_with_its_path() -> None:
    errs = errors_of({**BASE, "listen": {"prot": 80}})
    assert errs == {"listen.prot": "unknown key"}


def test_wrong_type_named() -> None:
    errs = errors_of({**BASE, "listen": {"port": "eighty"}})
    assert list(errs) == ["listen.port"]
    assert "integer" in errs["listen.port"]


def test_bad_duration_named() -> None:
    errs = errors_of({"upstream": {"url": "http://x", "read_timeout": "30 seconds"}})
    assert list(errs) == ["upstream.read_timeout"]
    assert "duration" in errs["upstream.read_timeout"]


def test_every_error_reported_at_once() -> None:
    errs = errors_of({"listen": {"port": -1, "nope": 1}, "upstream": {"url": "http://x"}, "x": 1})
    assert set(errs) == {"listen.port", "listen.nope", "x"}


def test_bad_cidr_and_header_name() -> None:
    errs = errors_of(
        {**BASE, "trust": {"sources": ["10.0.0.0/33"]}, "headers": {"caller_id": "a b"}}
    )
    assert set(errs) == {"trust.sources.0", "headers.caller_id"}


def test_bad_upstream_url() -> None:
    errs = errors_of({"upstream": {"url": "ftp://backend"}})
    assert "url must be" in errs["upstream"]


def test_top_level_must_be_mapping() -> None:
    assert errors_of([1, 2]) == {"": "the top level must be a mapping"}


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        # the problem's place, and where the construct it breaks began
        ("listen: [unclosed\n", "line 2, column 1", "while parsing a flow sequence at line 1"),
        ("upstream:\n  url: x\n    port: 1\n", "line 3, column 9", "mapping values"),
        ("upstream:\n  url: \x00\n", "line 2, column 8", "#x0000"),  # before any token
        ("a: *nope\n", "line 1, column 4", "undefined alias"),
    ],
)
def test_yaml_errors_name_the_file_line_and_column(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.message.startswith(f"not valid YAML: {path}, {where}: "), error.message
    assert problem in error.message
    assert "\n" not in error.message  # one line, as a log field or a reload's answer shows it
    assert "<unicode string>" not in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read file" in str(info.value)


def test_restart_only_fields_detected() -> None:
    a = load_config_data(BASE)
    b = load_config_data({**BASE, "listen": {"port": 9000}, "logging": {"level": "debug"}})
    assert restart_only_changes(a, b) == ["listen.port"]
    assert restart_only_changes(a, a) == []


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("upstream:\n  url: http://127.0.0.1:8081\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream:\n  url: http://127.0.0.1:8081\nlisten:\n  backlog: lots\n")
    assert main(["check-config", str(good)]) == 0
    assert "is valid" in capsys.readouterr().out
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "listen.backlog" in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert "sluice" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "check-config" in capsys.readouterr().out


def test_alias_bomb_refused_quickly(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("upstream: {url: 'http://x'}")
    lines.append("trust: {sources: *a8}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases are expanded"):
        load_config(path)


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _leaf_paths(ann, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


def test_example_config_lists_every_key_with_its_default() -> None:
    data = yaml.safe_load((ROOT / "config" / "sluice.example.yaml").read_text())
    example = load_config(ROOT / "config" / "sluice.example.yaml")
    defaults = load_config_data({"upstream": {"url": example.upstream.url}})
    for path in _leaf_paths(Config):
        node = data
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} missing from the example"
            node = node[part]
        got, want = example, defaults
        for part in path.split("."):
            got, want = getattr(got, part), getattr(want, part)
        assert got == want, f"{path}: example says {got!r}, default is {want!r}"
