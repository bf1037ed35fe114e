"""`upstream.tls`: every unusable setting is a config error naming its field, at load time,
so `sluice check-config` and start-up both refuse it; a usable one builds the context."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, load_config_data
from proxy.edge.cli import main
from proxy.upstream import TlsSettingError, make_upstream
from proxy.upstream.tls import upstream_tls
from tests.support import ROOT, free_port
from tests.tls_certs import CertAuthority, Issued, stray_key

URL = "https://backend.internal:8443"


class Files:
    """PEM files for the tests: a CA, a client certificate and key, and things that are not."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        ca = CertAuthority(d, "unit")
        self.ca = ca.cert
        client: Issued = ca.issue("client", client=True)
        self.cert, self.key = client.cert, client.key
        locked = ca.issue("locked", client=True, password=b"secret")
        self.locked_cert, self.locked_key = locked.cert, locked.key
        self.stray_key = stray_key(d / "stray-key.pem")
        self.combined = d / "combined.pem"
        self.combined.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        self.junk = d / "junk.pem"
        self.junk.write_text("this is not PEM\n")
        self.missing = d / "missing.pem"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("tls-unit"))


def data(tls: dict[str, Any], url: str = URL) -> dict[str, Any]:
    return {"upstream": {"url": url, "tls": {k: str(v) for k, v in tls.items()}}}


def errors_of(tls: dict[str, Any], url: str = URL) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config_data(data(tls, url))
    return {e.path: e.message for e in info.value.errors}


# -- usable settings ---------------------------------------------------------------------------


def test_a_ca_and_a_client_certificate_load(files: Files) -> None:
    config = load_config_data(
        data({"ca_file": files.ca, "cert_file": files.cert, "key_file": files.key})
    )
    tls = upstream_tls(config.upstream)
    assert tls is not None
    assert tls.server_hostname == "backend.internal"
    assert tls.context.verify_mode == ssl.CERT_REQUIRED
    assert tls.context.check_hostname
    assert tls.context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in tls.context.get_ca_certs()] == [
        ((("commonName", "unit test CA"),),)
    ]  # the CA file replaces the system store


def test_a_certificate_file_holding_its_key_needs_no_key_file(files: Files) -> None:
    load_config_data(data({"cert_file": files.combined}))


def test_the_server_name_replaces_the_url_host(files: Files) -> None:
    config = load_config_data(data({"server_name": "api.backend.test"}))
    tls = upstream_tls(config.upstream)
    assert tls is not None and tls.server_hostname == "api.backend.test"


def test_verify_off_turns_off_both_checks() -> None:
    tls = upstream_tls(load_config_data(data({"verify": False})).upstream)
    assert tls is not None
    assert tls.context.verify_mode == ssl.CERT_NONE
    assert not tls.context.check_hostname


def test_plain_http_has_no_tls() -> None:
    config = load_config_data({"upstream": {"url": "http://127.0.0.1:8081"}})
    assert upstream_tls(config.upstream) is None


# -- unusable settings, each named ------------------------------------------------------------


def test_a_missing_ca_file_is_named(files: Files) -> None:
    assert errors_of({"ca_file": files.missing}) == {
        "upstream.tls.ca_file": f"cannot read {files.missing}: No such file or directory"
    }


def test_an_unreadable_ca_file_is_named(files: Files) -> None:
    # A directory: unreadable as a file even by root, which the tests may run as.
    assert errors_of({"ca_file": files.dir}) == {
        "upstream.tls.ca_file": f"cannot read {files.dir}: Is a directory"
    }


@pytest.mark.parametrize("what", ["junk", "stray_key"])
def test_a_ca_file_that_is_not_pem_certificates_is_named(files: Files, what: str) -> None:
    path = getattr(files, what)
    message = errors_of({"ca_file": path})["upstream.tls.ca_file"]
    assert message.startswith(f"no PEM certificate in {path}")


@pytest.mark.parametrize("field", ["cert_file", "key_file"])
def test_a_missing_certificate_or_key_file_is_named(files: Files, field: str) -> None:
    tls = {"cert_file": files.cert, "key_file": files.key, field: files.missing}
    assert errors_of(tls) == {
        f"upstream.tls.{field}": f"cannot read {files.missing}: No such file or directory"
    }


def test_a_certificate_file_without_a_certificate_is_named(files: Files) -> None:
    message = errors_of({"cert_file": files.key, "key_file": files.key})["upstream.tls.cert_file"]
    assert message.startswith(f"no PEM certificate in {files.key}")


def test_a_key_file_without_a_key_is_named(files: Files) -> None:
    message = errors_of({"cert_file": files.cert, "key_file": files.junk})["upstream.tls.key_file"]
    assert message.startswith(f"no PEM private key in {files.junk}")


def test_a_key_that_does_not_match_the_certificate_is_named(files: Files) -> None:
    assert errors_of({"cert_file": files.cert, "key_file": files.stray_key}) == {
        "upstream.tls.key_file": f"the key in {files.stray_key} does not match the "
        f"certificate in {files.cert}"
    }


def test_an_encrypted_key_is_named_not_prompted_for(files: Files) -> None:
    assert errors_of({"cert_file": files.locked_cert, "key_file": files.locked_key}) == {
        "upstream.tls.key_file": f"the key in {files.locked_key} is encrypted: give an "
        "unencrypted one"
    }


def test_a_certificate_without_its_key_is_named(files: Files) -> None:
    message = errors_of({"cert_file": files.cert})["upstream.tls.cert_file"]
    assert (
        message == f"no private key in {files.cert}: set key_file, or append the key to cert_file"
    )


def test_a_key_without_a_certificate_is_named(files: Files) -> None:
    assert errors_of({"key_file": files.key}) == {
        "upstream.tls.key_file": "is set without cert_file (the certificate)"
    }


def test_every_unusable_file_is_named_at_once(files: Files) -> None:
    tls = {"ca_file": files.junk, "cert_file": files.cert, "key_file": files.stray_key}
    assert set(errors_of(tls)) == {"upstream.tls.ca_file", "upstream.tls.key_file"}


@pytest.mark.parametrize("tls", [{"verify": False}, {"server_name": "backend.test"}])
def test_tls_settings_on_a_plain_http_url_are_refused(tls: dict[str, Any]) -> None:
    assert errors_of(tls, url="http://backend.internal:8080") == {
        "upstream.tls": "TLS settings need an https:// url "
        "(upstream.url is 'http://backend.internal:8080')"
    }


@pytest.mark.parametrize("name", ["https://backend.test", "backend.test:443", "a b", "-x.test", ""])
def test_a_server_name_that_is_not_a_host_name_is_refused(name: str) -> None:
    errors = errors_of({"server_name": name})
    assert list(errors) == ["upstream.tls.server_name"]
    assert "not a host name or IP address" in errors["upstream.tls.server_name"]


@pytest.mark.parametrize("name", ["backend", "api.backend.test", "10.0.0.5", "::1", "x_y.test"])
def test_host_names_and_addresses_are_accepted_as_server_names(name: str) -> None:
    load_config_data(data({"server_name": name}))


def test_the_client_builder_refuses_unusable_files_too(files: Files) -> None:
    """Start-up builds the context again (the config may have been made in code)."""
    from proxy.config import UpstreamConfig

    config = UpstreamConfig.model_validate({"url": URL, "tls": {"ca_file": str(files.missing)}})
    with pytest.raises(TlsSettingError, match=r"upstream\.tls\.ca_file: cannot read"):
        make_upstream(config)


# -- the command line: check-config and start-up refuse it alike -------------------------------


def write(tmp_path: Path, tls: dict[str, Any]) -> Path:
    path = tmp_path / "sluice.yaml"
    ports = {"listen": {"port": free_port()}, "admin": {"port": free_port()}}
    path.write_text(yaml.safe_dump({**data(tls), **ports}))
    return path


def test_start_refuses_a_bad_tls_setting_with_exit_2(files: Files, tmp_path: Path) -> None:
    """A real process: were the setting accepted, it would run (and time out here)."""
    path = write(tmp_path, {"cert_file": files.cert, "key_file": files.stray_key})
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "upstream.tls.key_file: the key in" in out.stderr


def test_check_config_refuses_it_as_it_refuses_any_invalid_config(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"upstream": {"url": URL, "typo": 1}}))
    code_for_any_invalid_config = main(["check-config", str(other)])
    capsys.readouterr()
    path = write(tmp_path, {"ca_file": files.missing})
    assert main(["check-config", str(path)]) == code_for_any_invalid_config != 0
    assert "upstream.tls.ca_file: cannot read" in capsys.readouterr().err
