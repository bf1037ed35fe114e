"""A Locust file for pointing Locust at your own deployment (Sluice or the token backend).

    pip install '.[loadtest]'
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 200 -r 50 -t 2m --csv out/mine

Each user is an orchestrator asking for managed-identity tokens with an SDK-like retry policy
(backoff 0.8·2ⁿ s ±20 %, at most 5 retries, `retry-after-ms` / `Retry-After` honoured) and the
headers Sluice reads (`x-caller-id`, `x-retry-attempt`, `x-request-timeout-ms`, `x-request-id`).
Sluice's own answers are reported as failures named by their `x-sluice-reason`, so the failures
table shows how every refusal was answered.

Token requests are identical per identity, as real ones are: each caller owns a few managed
identities (fixed by SLUICE_SEED), each with one resource and client id, and every token call of
that caller uses one of them, so its URL repeats byte for byte. Only `x-request-id` is new on
every attempt (a per-call id plus the attempt number).

Knobs (environment variables):
    SLUICE_TOKEN_PATH   request path (default: the IMDS token path)
    SLUICE_CALLERS      comma-separated caller ids (default orchestrator-a..d)
    SLUICE_TIMEOUT      per-attempt timeout in seconds (default 1)
    SLUICE_RETRIES      retries per token (default 5; 0 = none)
    SLUICE_IDENTITIES   managed identities per caller (default 4)
    SLUICE_SEED         seed of the identities' client ids (default 1)
    SLUICE_SHAPE=reopen use ReopenShape: SLUICE_BASE_USERS steady users, then at
                        SLUICE_REOPEN_AT seconds SLUICE_BACKLOG_USERS more at once, for
                        SLUICE_RUN_TIME seconds in all

This file runs only under Locust. The incident-replay harness (`python -m loadtest`) never
imports it: Locust monkey-patches the standard library with gevent, which must not share a
process with uvloop.
"""

from __future__ import annotations

import os
import random
import uuid
from urllib.parse import quote

import gevent
from locust import FastHttpUser, LoadTestShape, between, task

TOKEN_PATH = os.environ.get(
    "SLUICE_TOKEN_PATH", "/metadata/identity/oauth2/token?api-version=2018-02-01"
)
CALLERS = [
    c.strip()
    for c in os.environ.get(
        "SLUICE_CALLERS", "orchestrator-a,orchestrator-b,orchestrator-c,orchestrator-d"
    ).split(",")
    if c.strip()
]
TIMEOUT = float(os.environ.get("SLUICE_TIMEOUT", "1"))
RETRIES = int(os.environ.get("SLUICE_RETRIES", "5"))
IDENTITIES = max(1, int(os.environ.get("SLUICE_IDENTITIES", "4")))
SEED = os.environ.get("SLUICE_SEED", "1")
RESOURCES = ("https://management.azure.com/", "https://storage.azure.com/")


def identity_paths(caller: str) -> list[str]:
    """The token paths of `caller`'s identities: each a fixed resource and client id (a GUID
    drawn from the seed and the caller), the same on every run with the same seed."""
    rng = random.Random(f"{SEED}:identity:{caller}")
    return [
        f"{TOKEN_PATH}&resource={quote(RESOURCES[k % len(RESOURCES)], safe='')}"
        f"&client_id={uuid.UUID(int=rng.getrandbits(128), version=4)}"
        for k in range(IDENTITIES)
    ]


def retry_after_seconds(headers: dict[str, str] | object) -> float | None:
    """`retry-after-ms` (preferred) or `Retry-After` seconds, if the answer carried one."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


class TokenClient(FastHttpUser):
    """An orchestrator fetching tokens for its VMs, with SDK-like retries."""

    wait_time = between(0.5, 1.5)
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT

    def on_start(self) -> None:
        """Pick this orchestrator's caller id; its identities' token paths come with it."""
        self.caller = random.choice(CALLERS)
        paths = identity_paths(self.caller)
        # Identities 0, 2, ... ask for the management plane, 1, 3, ... for storage.
        self.paths = {
            r: [p for k, p in enumerate(paths) if k % 2 == i] or paths
            for i, r in enumerate(RESOURCES)
        }

    def _get_token(self, resource: str) -> None:
        path = random.choice(self.paths[resource])
        call_id = uuid.uuid4().hex  # the attempt ids' prefix: one token call
        for attempt in range(RETRIES + 1):
            headers = {
                "x-caller-id": self.caller,
                "x-retry-attempt": str(attempt),
                "x-request-timeout-ms": str(int(TIMEOUT * 1000)),
                "x-request-id": f"{call_id}.{attempt}",
            }
            name = "token" if attempt == 0 else "token (retry)"
            with self.client.get(path, headers=headers, name=name, catch_response=True) as resp:
                if resp.status_code == 200:
                    resp.success()
                    return
                if resp.status_code == 0:  # timeout or connection error: no answer at all
                    resp.failure(f"no response ({type(resp.error).__name__})")
                else:
                    reason = resp.headers.get("x-sluice-reason") if resp.headers else None
                    resp.failure(f"{resp.status_code} {reason or 'no x-sluice-reason'}")
                retryable = resp.status_code in (0, 408, 429) or resp.status_code >= 500
                wait = retry_after_seconds(resp.headers)
            if not retryable or attempt == RETRIES:
                return
            if wait is None:
                wait = 0.8 * 2**attempt * random.uniform(0.8, 1.2)
            else:
                wait += random.uniform(0.0, 0.1)
            gevent.sleep(wait)

    @task(3)
    def management_token(self) -> None:
        """A token for the management plane (the common case)."""
        self._get_token(RESOURCES[0])

    @task(1)
    def storage_token(self) -> None:
        """A token for storage."""
        self._get_token(RESOURCES[1])


if os.environ.get("SLUICE_SHAPE") == "reopen":

    class ReopenShape(LoadTestShape):
        """Steady users, then a blocked backlog reopening at once, then hold."""

        base = int(os.environ.get("SLUICE_BASE_USERS", "50"))
        backlog = int(os.environ.get("SLUICE_BACKLOG_USERS", "500"))
        reopen_at = float(os.environ.get("SLUICE_REOPEN_AT", "30"))
        run_time = float(os.environ.get("SLUICE_RUN_TIME", "120"))

        def tick(self) -> tuple[int, float] | None:
            """Base users, then base + backlog spawned as fast as Locust can, then stop."""
            t = self.get_run_time()
            if t >= self.run_time:
                return None
            if t < self.reopen_at:
                return (self.base, max(1.0, self.base / 5.0))
            return (self.base + self.backlog, float(self.backlog))
