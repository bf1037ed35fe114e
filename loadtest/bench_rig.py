"""The bench's rig: which core runs what, the one request every row serves, pinned children.

The machine has two cores: the backend and the load generators share LOAD_CORE, the proxy under
test runs alone on PROXY_CORE (taskset). Every request is the same request line (PATH, no
attempt header) and the backend answers it with the same ~200-byte JSON token (BODY).
"""

from __future__ import annotations

import http.client
from collections.abc import Sequence
from pathlib import Path

from .procs import Child, ProcessGroup

ROOT = Path(__file__).resolve().parent.parent  # children run `-m loadtest...` from here
LOAD_CORE = 0  # backend + load generators
PROXY_CORE = 1  # the proxy under test, alone
PATH = "/token?resource=bench"
BENCH_HEADERS: tuple[tuple[str, str], ...] = ()  # identical requests, no attempt header
ADMIN_TOKEN = "bench-admin-token"
BODY = (
    '{"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1l'
    'bnQuYXp1cmUuY29tIn0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU","expires_in":"86399",'
    '"token_type":"Bearer"}'
)


def http_call(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One blocking request on 127.0.0.1 (no proxy environment consulted)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_pinned(
    group: ProcessGroup,
    name: str,
    argv: Sequence[str],
    core: int | None,
    env: dict[str, str] | None = None,
) -> Child:
    """Start `argv` from the repository root (on `core`, with taskset, when given)."""
    full = ["taskset", "-c", str(core), *argv] if core is not None else list(argv)
    return group.start_argv(name, full, env, ROOT)
