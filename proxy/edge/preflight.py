"""Every check `sluice --config FILE` makes before it binds a socket, in the one function that
`sluice check-config FILE` runs too: a config that check-config accepts gets past them at start,
and a config either refuses is refused by both, with the same field errors and exit code 2.

What only binding can find (a port another process holds, an address this host does not have)
is left to start, which refuses it with exit code 2 as well.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ..config import Config, ConfigError, FieldError, load_config
from .admin import TokenError, load_admin_token

# Wildcard hosts by the address family they bind (asyncio binds "::" IPv6-only).
_WILDCARDS = {"0.0.0.0": 4, "::": 6}


def preflight(path: Path) -> Config:
    """Load `path` and apply every start-time check; raise `ConfigError` listing each problem
    with its dotted field."""
    config = load_config(path)
    errors = [*admin_token_errors(config), *listener_errors(config)]
    if errors:
        raise ConfigError(str(path), errors)
    return config


def admin_token_errors(config: Config) -> list[FieldError]:
    """The admin token file as start reads it: missing, unreadable, world-readable or empty.
    (A `token_env` variable that is unset is not an error: mutating calls are then refused.)"""
    try:
        load_admin_token(config.admin)
    except TokenError as exc:
        return [FieldError(exc.field, exc.problem)]
    return []


def listener_errors(config: Config) -> list[FieldError]:
    """The proxy and admin listeners on one port and overlapping addresses: the second bind
    would fail."""
    listen, admin = config.listen, config.admin
    if listen.port == 0 or listen.port != admin.port:
        return []
    if not _overlap(listen.host, admin.host):
        return []
    return [
        FieldError(
            "admin.port",
            f"{admin.port} is also listen.port, on an overlapping address "
            f"(listen.host {listen.host}, admin.host {admin.host})",
        )
    ]


def _overlap(a: str, b: str) -> bool:
    """Whether binding both hosts on one port surely clashes (host names are left to start)."""
    if a == b:
        return True
    for wildcard, other in ((a, b), (b, a)):
        family = _WILDCARDS.get(wildcard)
        if family is not None and _family(other) == family:
            return True
    return False


def _family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None
