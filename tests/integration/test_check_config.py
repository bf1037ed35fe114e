"""`sluice check-config FILE` makes every check `sluice --config FILE` makes before it binds,
and the two refuse a bad config alike: exit code 2 and the same field errors (real processes).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from proxy.edge.cli import main
from tests.support import ROOT, free_port


def write(tmp_path: Path, data: dict[str, object] | str) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config(**sections: object) -> dict[str, object]:
    base: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "upstream": {"url": "http://127.0.0.1:9"},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"raise_nofile": False},
    }
    return {**base, **sections}


def token_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def world_readable_token(tmp_path: Path) -> Path:
    token = token_file(tmp_path, "s3cret\n", 0o644)
    return write(tmp_path, config(admin={"host": "127.0.0.1", "port": 0, "token_file": str(token)}))


def empty_token(tmp_path: Path) -> Path:
    token = token_file(tmp_path, "\n", 0o600)
    return write(tmp_path, config(admin={"host": "127.0.0.1", "port": 0, "token_file": str(token)}))


def missing_token(tmp_path: Path) -> Path:
    absent = str(tmp_path / "absent")
    return write(tmp_path, config(admin={"host": "127.0.0.1", "port": 0, "token_file": absent}))


def one_port_for_both_listeners(tmp_path: Path) -> Path:
    port = free_port()
    return write(
        tmp_path,
        config(listen={"host": "0.0.0.0", "port": port}, admin={"host": "127.0.0.1", "port": port}),
    )


def schema_error(tmp_path: Path) -> Path:
    return write(tmp_path, config(listen={"backlog": "lots"}))


def yaml_error(tmp_path: Path) -> Path:
    return write(tmp_path, "upstream:\n  url: [unclosed\n")


# Each bad config, and what the error line starts with.
BAD: list[tuple[Callable[[Path], Path], str]] = [
    (world_readable_token, "admin.token_file: "),
    (empty_token, "admin.token_file: "),
    (missing_token, "admin.token_file: cannot read"),
    (one_port_for_both_listeners, "admin.port: "),
    (schema_error, "listen.backlog: "),
    (yaml_error, "not valid YAML: "),
]


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,  # a start that was not refused would run until killed here
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """The field errors as `sluice` prints them, indented under `invalid config FILE`."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize(("make", "starts_with"), BAD, ids=[make.__name__ for make, _ in BAD])
def test_check_config_and_start_refuse_a_bad_config_alike(
    tmp_path: Path,
    make: Callable[[Path], Path],
    starts_with: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = make(tmp_path)
    assert main(["check-config", str(path)]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert any(e.startswith(starts_with) for e in errors), errors
    start = sluice("--config", str(path))  # a process: start sets up logging, signals, limits
    assert start.returncode == 2, start.stderr
    assert error_lines(start.stderr) == errors  # the same function refused it, with one voice


def test_a_good_config_with_a_private_token_file_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = token_file(tmp_path, "s3cret\n", 0o600)
    path = write(tmp_path, config(admin={"host": "127.0.0.1", "port": 0, "token_file": str(token)}))
    assert main(["check-config", str(path)]) == 0
    assert "is valid" in capsys.readouterr().out
