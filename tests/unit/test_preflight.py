"""The start-time checks that need no socket: the proxy and admin listeners on one port."""

from __future__ import annotations

import pytest

from proxy.config import load_config_data
from proxy.edge.preflight import listener_errors


def fields(listen: tuple[str, int], admin: tuple[str, int]) -> list[str]:
    config = load_config_data(
        {
            "upstream": {"url": "http://127.0.0.1:9"},
            "listen": {"host": listen[0], "port": listen[1]},
            "admin": {"host": admin[0], "port": admin[1]},
        }
    )
    return [e.path for e in listener_errors(config)]


@pytest.mark.parametrize(
    ("listen", "admin"),
    [
        (("127.0.0.1", 9000), ("127.0.0.1", 9000)),
        (("0.0.0.0", 9000), ("127.0.0.1", 9000)),  # the wildcard holds every IPv4 address
        (("10.1.2.3", 9000), ("0.0.0.0", 9000)),
        (("::", 9000), ("::1", 9000)),
        (("localhost", 9000), ("localhost", 9000)),
    ],
)
def test_one_port_on_overlapping_addresses_is_refused(
    listen: tuple[str, int], admin: tuple[str, int]
) -> None:
    assert fields(listen, admin) == ["admin.port"]


@pytest.mark.parametrize(
    ("listen", "admin"),
    [
        (("0.0.0.0", 8080), ("127.0.0.1", 9901)),  # the shipped layout
        (("0.0.0.0", 0), ("127.0.0.1", 0)),  # ephemeral ports never clash
        (("127.0.0.1", 9000), ("127.0.0.2", 9000)),
        (("0.0.0.0", 9000), ("::1", 9000)),  # asyncio binds "::" IPv6-only, and 0.0.0.0 is v4
        (("localhost", 9000), ("127.0.0.1", 9000)),  # names are left to the bind at start
    ],
)
def test_distinct_listeners_pass(listen: tuple[str, int], admin: tuple[str, int]) -> None:
    assert fields(listen, admin) == []
