"""TLS towards an https:// upstream: the one `ssl.SSLContext` both clients use, built from
`upstream.tls` at start-up, and every problem with its files named by field.

Config loading builds it too (`sluice check-config` and start-up both go through it), so a
missing file, a key that does not belong to its certificate or a CA file that is not PEM is a
config error before anything listens, not a 502 on the first request. Pure: no event loop.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..config_network import TlsConfig, UpstreamConfig


@dataclass(frozen=True, slots=True)
class TlsProblem:
    """One unusable `upstream.tls` setting: `field` is its key within `upstream.tls`."""

    field: str
    message: str


class TlsSettingError(ValueError):
    """`upstream.tls` cannot be used; `problems` names each field at fault."""

    def __init__(self, problems: list[TlsProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"upstream.tls.{p.field}: {p.message}" for p in problems))


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """What a client needs to open a TLS connection: the context and the name to check."""

    context: ssl.SSLContext
    server_hostname: str  # sent as SNI (unless an IP address) and matched to the certificate
    verify: bool


class _EncryptedKey(Exception):
    """Raised by the password callback: Sluice never prompts for a key's passphrase."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal: a daemon would hang at start.
    raise _EncryptedKey


def upstream_tls(config: UpstreamConfig) -> UpstreamTls | None:
    """The TLS settings for `config.url` (None for http://); raises TlsSettingError."""
    parts = urlsplit(config.url)
    if parts.scheme != "https":
        return None
    tls = config.tls
    return UpstreamTls(
        context=client_context(tls),
        server_hostname=tls.server_name or parts.hostname or "",
        verify=tls.verify,
    )


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client context: the system trust store or `ca_file`, the client certificate if
    configured, verification as configured (TLS 1.2 at least). Raises TlsSettingError
    listing every field at fault."""
    problems: list[TlsProblem] = []
    ctx = _context(tls.ca_file, problems)
    if tls.key_file is not None and tls.cert_file is None:
        problems.append(TlsProblem("key_file", "is set without cert_file (the certificate)"))
    elif tls.cert_file is not None:
        problems += _load_client_cert(ctx, tls.cert_file, tls.key_file)
    if problems:
        raise TlsSettingError(problems)
    if not tls.verify:
        ctx.check_hostname = False  # must be off before verification can be
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _context(ca_file: Path | None, problems: list[TlsProblem]) -> ssl.SSLContext:
    """Trusting `ca_file` alone (a private CA replaces the system store, as curl's --cacert
    and Envoy's trusted_ca do), or the system store."""
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except OSError as exc:
        problems.append(_problem("ca_file", ca_file, exc, "certificate"))
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # to go on checking the rest


def _load_client_cert(ctx: ssl.SSLContext, cert: Path, key: Path | None) -> list[TlsProblem]:
    # load_cert_chain's errors name neither file: read each one first, then tell a bad
    # certificate from a bad key by loading the certificate alone.
    problems = [p for p in (_unreadable("cert_file", cert), _unreadable("key_file", key)) if p]
    if problems:
        return problems
    try:
        ssl.create_default_context(cafile=cert)
    except OSError as exc:
        return [_problem("cert_file", cert, exc, "certificate")]
    key_field, key_path = ("key_file", key) if key is not None else ("cert_file", cert)
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        why = f"the key in {key_path} is encrypted: give an unencrypted one"
        return [TlsProblem(key_field, why)]
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            why = f"the key in {key_path} does not match the certificate in {cert}"
        elif key is None:
            why = f"no private key in {cert}: set key_file, or append the key to cert_file"
        else:
            return [_problem(key_field, key, exc, "private key")]
        return [TlsProblem(key_field, why)]
    except OSError as exc:  # the file changed between the two reads
        return [_problem(key_field, key_path, exc, "private key")]
    return []


def _unreadable(field: str, path: Path | None) -> TlsProblem | None:
    if path is None:
        return None
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        return _problem(field, path, exc, "")


def _problem(field: str, path: Path | None, exc: OSError, what: str) -> TlsProblem:
    """A file that cannot be read, or (an ssl.SSLError) holds no PEM `what`."""
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc.strerror or exc).replace("_", " ").lower()
        return TlsProblem(field, f"no PEM {what} in {path} ({reason})")
    return TlsProblem(field, f"cannot read {path}: {exc.strerror or exc}")
