"""Admin token loading: from a file (refused when world-readable or empty) or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import AdminConfig
from proxy.edge.admin import TokenError, load_admin_token


def test_token_from_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    assert load_admin_token(AdminConfig(token_file=path)) == "s3cret"


def test_world_readable_token_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret")
    path.chmod(0o644)
    with pytest.raises(TokenError, match="world-readable"):
        load_admin_token(AdminConfig(token_file=path))


def test_empty_or_missing_token_file_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    empty.chmod(0o600)
    with pytest.raises(TokenError, match="empty"):
        load_admin_token(AdminConfig(token_file=empty))
    with pytest.raises(TokenError, match="cannot read"):
        load_admin_token(AdminConfig(token_file=tmp_path / "absent"))


def test_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TOKEN", "abc")
    assert load_admin_token(AdminConfig(token_env="MY_TOKEN")) == "abc"
    monkeypatch.delenv("MY_TOKEN")
    assert load_admin_token(AdminConfig(token_env="MY_TOKEN")) is None
