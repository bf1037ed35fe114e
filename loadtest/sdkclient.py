"""The `azure-sdk` client profile: Microsoft's own `azure-identity`, not a model of it.

Each workflow is an `azure.identity.aio.ManagedIdentityCredential(client_id=...)` whose
`get_token(resource + "/.default")` runs the SDK's IMDS code path unchanged: its request
(`GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...&client_id=...` with
`Metadata: true` and a per-call `x-ms-client-request-id` kept across its retries), its retry
policy (`AsyncImdsRetryPolicy`: 5 retries on 404, 410, 429 and 5xx, backoff 0.8·2ⁿ⁻¹ s with no
jitter and none before the first retry, `Retry-After` honoured before `retry-after-ms`), its
token parsing and cache. No attempt or timeout header: Sluice must recognise the retries itself.

The SDK finds IMDS through `AZURE_POD_IDENTITY_AUTHORITY_HOST` (read on every request, so the
fleet sets it once, to the storm region's target: `point_sdk_at`). Its HTTP goes through
`RecordingTransport`, an `AsyncHttpTransport` per credential that delegates to one shared
`AioHttpTransport` (azure-core's own) and records each attempt for the analysis (start, end,
status + `x-sluice-reason`). It adds two headers the analysis needs and the SDK does not send:
`x-request-id` (unique per attempt, the join key of wasted work) and `x-caller-id` (which
orchestrator: every client here shares 127.0.0.1, so the peer address cannot say).

Imported only by the fleet when the profile is `azure-sdk` (`azure-identity` is in the
`loadtest` and `dev` extras).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from azure.core.exceptions import (
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AioHttpTransport, AsyncHttpTransport
from azure.identity.aio import ManagedIdentityCredential

from .fleet_workflow import answer_code

POD_IDENTITY_HOST = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
# Variables that would send ManagedIdentityCredential down another path than IMDS (App Service,
# Arc, Azure ML, Cloud Shell, workload identity): cleared in the fleet process.
OTHER_PATHS = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
)
# What azure-identity's IMDS credential gives the transport it builds for itself
# (`azure.identity._credentials.imds.PIPELINE_SETTINGS`); the read timeout stays azure-core's
# default (300 s).
SDK_CONNECTION_TIMEOUT = 2.0


def point_sdk_at(base_url: str) -> None:
    """Make every ManagedIdentityCredential of this process use IMDS at `base_url`."""
    for name in OTHER_PATHS:
        os.environ.pop(name, None)
    os.environ[POD_IDENTITY_HOST] = base_url


def sdk_retry_after(headers: Any) -> float | None:
    """The delay azure-core's retry policy takes from an answer: `Retry-After` (seconds) first,
    then `retry-after-ms` / `x-ms-retry-after-ms` (HTTP dates are not sent here)."""
    ra = headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        ms = headers.get(name)
        if ms:
            try:
                return max(0.0, float(ms) / 1000.0)
            except ValueError:
                return None
    return None


class AttemptSink(Protocol):
    """The workflow a RecordingTransport sends for."""

    def attempt_headers(self, attempt: int) -> Iterable[tuple[str, str]]:
        """Headers to add to attempt number `attempt` (0 = the first)."""

    def attempt_done(
        self, attempt: int, started: float, finished: float, code: str, ra: float | None
    ) -> None:
        """One attempt ended (monotonic times; code as `answer_code`, or timeout /
        connection-error)."""

    def attempt_held(self) -> None:
        """The first attempt is built and waits at the transport for the release."""


class SharedSession:
    """One aiohttp session and azure-core transport for every credential of the fleet.

    Its connector has no connection limit (aiohttp's default of 100 would queue a reopening
    inside the client, where no proxy could see it): every waiting workflow gets its own
    connection, as separate VMs would.
    """

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,  # loopback only: never through a proxy from the environment
        )
        self.transport = AioHttpTransport(
            session=self.session, session_owner=False, connection_timeout=SDK_CONNECTION_TIMEOUT
        )

    async def close(self) -> None:
        """Close the session (and every pooled connection)."""
        await self.session.close()


class RecordingTransport(AsyncHttpTransport):  # type: ignore[type-arg]
    """One credential's transport: adds the harness's headers, records every attempt, and
    delegates to the shared azure-core transport. `base_url`, when given, replaces the scheme
    and host the SDK built from `AZURE_POD_IDENTITY_AUTHORITY_HOST` (a workflow of another
    region than the one the variable names). `hold`, when given, keeps the first attempt on the
    wire's edge until it is set: a blocked workflow has called `get_token` and the SDK has built
    its request, and the network gives way at the release (what the fleet's lean clients do by
    encoding ahead; one process cannot run 1,000 SDK calls from scratch in the same instant)."""

    def __init__(
        self,
        shared: SharedSession,
        sink: AttemptSink,
        base_url: str | None = None,
        hold: asyncio.Event | None = None,
    ):
        self.inner = shared.transport
        self.sink = sink
        self.base = urlsplit(base_url) if base_url else None
        self.hold = hold
        self.attempts = 0

    @property
    def connection_config(self) -> Any:
        """The inner transport's (the retry policy reads its connection timeout)."""
        return self.inner.connection_config

    async def __aenter__(self) -> RecordingTransport:
        await self.open()
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the shared transport (idempotent)."""
        await self.inner.open()

    async def close(self) -> None:
        """Nothing to close: the session is shared (SharedSession.close ends it)."""

    async def sleep(self, duration: float) -> None:
        """The retry policy's waits."""
        await asyncio.sleep(duration)

    async def send(self, request: Any, **kwargs: Any) -> Any:
        """Send one attempt through the shared transport and record it."""
        attempt = self.attempts
        self.attempts += 1
        for name, value in self.sink.attempt_headers(attempt):
            request.headers[name] = value
        if self.base is not None:
            parts = urlsplit(request.url)
            request.url = urlunsplit(
                parts._replace(scheme=self.base.scheme, netloc=self.base.netloc)
            )
        if attempt == 0 and self.hold is not None and not self.hold.is_set():
            self.sink.attempt_held()
            await self.hold.wait()
        started = time.monotonic()
        try:
            response = await self.inner.send(request, **kwargs)
        except (ServiceRequestTimeoutError, ServiceResponseTimeoutError):
            self.sink.attempt_done(attempt, started, time.monotonic(), "timeout", None)
            raise
        except (ServiceRequestError, ServiceResponseError):
            self.sink.attempt_done(attempt, started, time.monotonic(), "connection-error", None)
            raise
        headers = response.headers
        self.sink.attempt_done(
            attempt,
            started,
            time.monotonic(),
            answer_code(response.status_code, headers),
            sdk_retry_after(headers),
        )
        return response


def make_credential(
    shared: SharedSession,
    sink: AttemptSink,
    client_id: str,
    base_url: str | None = None,
    hold: asyncio.Event | None = None,
) -> ManagedIdentityCredential:
    """A ManagedIdentityCredential for one user-assigned identity, on a recording transport."""
    return ManagedIdentityCredential(
        client_id=client_id, transport=RecordingTransport(shared, sink, base_url, hold)
    )


async def fetch_token(credential: ManagedIdentityCredential, scope: str) -> str | None:
    """`get_token(scope)` as an application calls it: the token, or None when the SDK gave up
    (it raised: retries exhausted, or an answer it does not retry; the recorded attempts say
    how each one ended)."""
    try:
        token = await credential.get_token(scope)
    except Exception:  # the SDK raises ClientAuthenticationError / CredentialUnavailableError
        return None
    value: str = token.token
    return value
