"""A fleet of sidecars behind a load balancer (issue 18), the pure part: how the scenario's
capacity is split across K backends, what each member is called, and the HAProxy config that
fronts them.

The split keeps every figure comparable across K: the same N, the same λ₀ and the same sum of
capacities ΣC (the scenario's `workers` shared out, `workers // K` each and the remainder one
more to the first members; the queue limit likewise), so N/(ΣC - λ₀) is the bound at every K.

The balancer is Debian's HAProxy, as deployed in front of a real fleet, configured so that it
never decides anything the sidecars are measured on: no server `maxconn` (and a global and
frontend one far above any run's connections), no stickiness, `retries 0` and no
`option redispatch` (a refused request is the client's to retry, through the balancer, as in
the incident), `option forwardfor` (each sidecar tells clients apart by `X-Forwarded-For`, its
peer being the balancer), `X-Request-Start` set to when HAProxy received the request (each
sidecar counts a request's time from there, `trust.request_start`: at a release, time a
request spends in front of a sidecar is invisible to the sidecar's loop heartbeat),
keep-alive on both sides, timeouts longer than any client's, and no health checks (a check
would take every server out during `backend-outage` and HAProxy would answer 503 itself: an
answer from the balancer, not the system under test).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

LB_ALGORITHMS: tuple[str, ...] = ("roundrobin", "leastconn")
HAPROXY = "haproxy"
HAPROXY_MISSING = (
    "haproxy is not on PATH: the fleet replay runs Debian's HAProxy in front of the sidecars "
    "(apt-get install haproxy)"
)
# Far above any run's connections (N + λ₀·T + the harness's own), so HAProxy never queues;
# HAProxy sizes its file limit from it (2 per connection), which must fit the hard limit.
MAX_CONN = 8000
# The longest any client waits for an answer: the real SDK's read timeout (azure-core, 300 s);
# the scenarios' clients give up after T (a second or so). HAProxy waits longer than both.
CLIENT_WAIT_MAX = 300.0
TIMEOUT_MARGIN = 30.0
HAPROXY_WEIGHT_MAX = 256  # HAProxy's largest server weight


class Server(NamedTuple):
    """One server of the balancer: its name, its port on 127.0.0.1 and its workers (weight)."""

    name: str
    port: int
    workers: int


def split_evenly(total: int, k: int) -> list[int]:
    """`total` shared out over `k` parts: `total // k` each, the remainder one more to the
    first parts (the sum is `total`). ValueError when a part would be empty."""
    if k < 1:
        raise ValueError(f"a fleet needs at least one member (got {k})")
    if total < k:
        raise ValueError(f"{total} cannot be split over {k} members (each needs at least one)")
    base, extra = divmod(total, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def member_names(region: str, k: int) -> list[str]:
    """The names of a region's K members (backend i and its sidecar i): `east-0`, `east-1`…"""
    return [f"{region}-{i}" for i in range(k)]


def haproxy_timeout(client_timeout: float) -> float:
    """Seconds HAProxy waits on either side: longer than every client's wait."""
    return max(CLIENT_WAIT_MAX, client_timeout) + TIMEOUT_MARGIN


def haproxy_config(port: int, servers: Sequence[Server], balance: str, timeout_s: float) -> str:
    """The HAProxy config of one fleet arm: a frontend on 127.0.0.1:`port` and `servers` with
    `balance` (one of LB_ALGORITHMS), weighted by their workers (a member with one worker more
    takes its share more), as the module docstring says."""
    if balance not in LB_ALGORITHMS:
        raise ValueError(f"balance must be one of {', '.join(LB_ALGORITHMS)} (got {balance!r})")
    if not servers:
        raise ValueError("a balancer needs at least one server")
    t = f"{timeout_s:.0f}s"
    lines = [
        "# Written by the load-test harness (loadtest/balancer.py) for one fleet arm.",
        "global",
        "    nbthread 1",  # two cores and up to a dozen processes: one thread is plenty
        f"    maxconn {MAX_CONN}",
        "defaults",
        "    mode http",
        f"    maxconn {MAX_CONN}",
        "    option http-keep-alive",
        "    option forwardfor",
        # A client that gives up closes its connection; without this HAProxy would keep its
        # request at the sidecar until answered, and the sidecar would never see the client
        # leave, as it does without a balancer.
        "    option abortonclose",
        "    retries 0",
        "    no option redispatch",
        "    timeout connect 5s",
        *(f"    timeout {name} {t}" for name in ("client", "server", "http-request")),
        *(f"    timeout {name} {t}" for name in ("http-keep-alive", "queue")),
        "frontend fleet",
        f"    bind 127.0.0.1:{port}",
        # When HAProxy received the request, for the sidecars (`trust.request_start`).
        "    http-request set-header X-Request-Start t=%[date(0,us)]",
        "    default_backend members",
        "backend members",
        f"    balance {balance}",
    ]
    for s in servers:
        weight = max(1, min(HAPROXY_WEIGHT_MAX, s.workers))
        lines.append(f"    server {s.name} 127.0.0.1:{s.port} weight {weight}")
    return "\n".join(lines) + "\n"


# A sidecar behind the balancer believes forwarding headers from the balancer alone: every
# connection's peer is HAProxy on 127.0.0.1, the clients connect from 127.1.x.y (untrusted), so
# the client is the rightmost untrusted X-Forwarded-For hop (proxy/headers.py TrustedSources).
# The balancer's X-Request-Start is believed too (same host, same clock).
SIDECAR_TRUST: dict[str, Any] = {"sources": ["127.0.0.1/32", "::1/128"], "request_start": True}
