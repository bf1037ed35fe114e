"""Upstream HTTP clients behind one narrow interface (see base.py)."""

from __future__ import annotations

from ..config import UpstreamConfig
from .base import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResetError,
    UpstreamResponse,
    UpstreamTimeoutError,
)

__all__ = [
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRequest",
    "UpstreamResetError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "make_upstream",
]


def make_upstream(config: UpstreamConfig) -> UpstreamClient:
    """The client named by `upstream.client` (must be called inside the running loop)."""
    if config.client == "lean":
        from .lean import LeanUpstream

        return LeanUpstream(config)
    from .aiohttp_client import AiohttpUpstream

    return AiohttpUpstream(config)
