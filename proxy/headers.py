"""Header rewriting for a transparent proxy (pure): hop-by-hop stripping, forwarded headers,
and which peers are trusted to tell us who they are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1 plus the de-facto ones (Keep-Alive, Proxy-Connection, TE, Trailer...).
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


# X-Forwarded-For: hops looked at from the right, and the longest hop text kept (an address
# with a port and brackets fits; longer is not an address).
_MAX_HOPS = 8
_MAX_HOP_TEXT = 64


class TrustedSources:
    """Peers (by CIDR) whose identity and forwarding headers are believed."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        # Peers repeat (sidecars see a handful of addresses); the cache keeps the check O(1).
        self.contains = lru_cache(maxsize=4096)(self._contains)

    def client_of(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: `peer`, or, when `peer` is trusted and says whom it
        forwards for, the rightmost `X-Forwarded-For` hop that is not itself trusted (a
        balancer in front of a fleet is every connection's peer; without this, every client
        behind it is one caller). Hops past `_MAX_HOPS` from the right are not looked at."""
        if not forwarded_for:
            return peer
        hops = forwarded_for.rsplit(",", _MAX_HOPS)
        client = peer
        for hop in reversed(hops[-_MAX_HOPS:]):
            hop = hop.strip()[:_MAX_HOP_TEXT]
            if not hop:
                break
            client = hop
            if not self.contains(hop):
                break
        return client

    def _contains(self, peer: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names listed in `Connection` (they are hop-by-hop for this hop only)."""
    tokens: set[str] = set()
    for value in headers.getall("connection", ()):
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


_HOP_BY_HOP = tuple(HOP_BY_HOP)


def strip_hop_by_hop(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, those named in `Connection`, and `drop`."""
    # One C-level copy, then a few C-level removals: cheaper than a Python loop over every
    # header (order and case of what is kept are the same).
    out: CIMultiDict[str] = CIMultiDict(headers)
    if "connection" in headers:
        for token in connection_tokens(headers):
            out.popall(token, None)
    for name in _HOP_BY_HOP:
        if name in out:
            out.popall(name)
    for name in drop:
        if name in out:
            out.popall(name)
    return out


def _forwarded_node(peer: str) -> str:
    return f'"[{peer}]"' if ":" in peer else peer


def set_forwarded(
    out: CIMultiDict[str],
    inbound: CIMultiDictProxy[str] | CIMultiDict[str],
    peer: str,
    scheme: str,
    host: str | None,
    trusted: bool,
) -> None:
    """Append this hop to X-Forwarded-For/Forwarded; believe inbound ones only from trusted peers.

    From an untrusted peer any inbound X-Forwarded-*/Forwarded values are dropped: a client
    must not be able to claim another address.
    """
    prior_xff = inbound.getall("x-forwarded-for", ()) if trusted else ()
    prior_fwd = inbound.getall("forwarded", ()) if trusted else ()
    for name in ("x-forwarded-for", "forwarded", "x-forwarded-proto", "x-forwarded-host"):
        out.popall(name, None)
    chain = [v.strip() for v in prior_xff if v.strip()]
    chain.append(peer)
    out["X-Forwarded-For"] = ", ".join(chain)
    proto = inbound.get("x-forwarded-proto") if trusted else None
    out["X-Forwarded-Proto"] = proto or scheme
    if host:
        out["X-Forwarded-Host"] = (inbound.get("x-forwarded-host") if trusted else None) or host
    element = f"for={_forwarded_node(peer)};proto={scheme}"
    if host:
        element += f';host="{host}"'
    fwd = [v.strip() for v in prior_fwd if v.strip()]
    fwd.append(element)
    out["Forwarded"] = ", ".join(fwd)
