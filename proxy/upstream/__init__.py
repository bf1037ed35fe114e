"""Upstream HTTP clients behind one narrow interface (see base.py)."""

from __future__ import annotations

import logging

# From the schema, not ..config: config imports .tls to check the files at load time.
from ..config_network import UpstreamConfig
from .base import (
    LateAnswer,
    UpstreamAbandoned,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResetError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from .tls import TlsSettingError, UpstreamTls, upstream_tls

__all__ = [
    "LateAnswer",
    "TlsSettingError",
    "UpstreamAbandoned",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRequest",
    "UpstreamResetError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "UpstreamTls",
    "make_upstream",
]


log = logging.getLogger("sluice.upstream")


def make_upstream(config: UpstreamConfig) -> UpstreamClient:
    """The client named by `upstream.client`, its TLS context built here, once (must be called
    inside the running loop). Raises TlsSettingError if `upstream.tls` cannot be used."""
    tls = upstream_tls(config)
    if tls is not None and not tls.verify:
        log.warning(
            "upstream TLS verification is off (upstream.tls.verify: false): any certificate "
            "is accepted, so anyone on the path can read and answer the proxied requests",
            extra={"upstream": config.url},
        )
    if config.client == "lean":
        from .lean import LeanUpstream

        return LeanUpstream(config, tls)
    from .aiohttp_client import AiohttpUpstream

    return AiohttpUpstream(config, tls)
