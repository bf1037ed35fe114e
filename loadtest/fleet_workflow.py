"""One workflow of the fleet: a token fetched with its profile's retries (or through the real
SDK), each attempt recorded for the analysis; and the state every user of the fleet shares.

Records (see loadtest.analysis): a workflow is [id, kind, home region index, caller index,
intended start, end, ok, attempts]; an attempt is (workflow id, attempt, target region index,
sent, done, code, retry-after s), code as `answer_code` names it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from .fleet_spec import FleetSpec
from .identities import Identity, make_identities
from .profiles import Failure, Profile, is_retryable_status, parse_retry_after
from .users import User
from .users_client import Prepared, Result

KIND_FRESH, KIND_BACKLOG = 0, 1


class RateCap:
    """A pacing gate shared by rate-capped (hostile) clients: at most `rate` attempts per s."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_free = 0.0

    async def take(self) -> None:
        """Wait for this attempt's turn."""
        now = time.monotonic()
        slot = max(self.next_free, now)
        self.next_free = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass
class FleetState:
    """Shared by every user: the spec, the profile and the raw records."""

    spec: FleetSpec
    profile: Profile
    release: asyncio.Event = field(default_factory=asyncio.Event)
    workflows: list[list[Any]] = field(default_factory=list)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    retry_rng: random.Random = field(default_factory=random.Random)
    rate_cap: RateCap | None = None
    t_release: float | None = None
    dropped_arrivals: int = 0
    prepared: list[Prepared] = field(default_factory=list)
    sdk_held: int = 0  # azure-sdk first attempts built and held at the transport (the release)
    release_written: float | None = None
    sdk: Any = None  # loadtest.sdkclient.SharedSession with the azure-sdk profile

    def __post_init__(self) -> None:
        self.retry_rng = random.Random(f"{self.spec.seed_key}:retries")
        self.caller_names = [c for c, _ in self.spec.callers]
        self.caller_weights = [w for _, w in self.spec.callers]
        self.identities = make_identities(
            self.spec.seed, self.caller_names, self.spec.identities_per_caller
        )
        if self.profile.rate_capped:
            self.rate_cap = RateCap(self.spec.hostile_rate_cap)


def answer_code(status: int, headers: Any) -> str:
    """An answer's outcome as the analysis names it ("200", "<status> <x-sluice-reason>",
    "<status> backend:<reason>", "<status> -")."""
    if status == 200:
        return "200"
    reason = headers.get("x-sluice-reason")
    if reason is None:
        backend = headers.get("x-backend-reason")
        reason = f"backend:{backend}" if backend else "-"
    return f"{status} {reason}"


def outcome_code(result: Result) -> str:
    """How an attempt ended: "200", "timeout", "connection-error" or "<status> <reason>"."""
    if result.error == "timeout":
        return "timeout"
    if result.error is not None:
        return "connection-error"
    resp = result.response
    assert resp is not None
    return answer_code(resp.status, resp.headers)


def client_address(n: int) -> str:
    """The loopback address client machine `n` connects from (127.1.0.0 upwards: all of
    127.0.0.0/8 is loopback on Linux, and 127.0.0.x is left to the servers)."""
    return f"127.{1 + (n >> 16) % 254}.{(n >> 8) & 255}.{n & 255}"


class Workflow:
    """One workflow: a token fetched with the profile's retries, recorded for the analysis."""

    def __init__(self, user: User, state: FleetState, kind: int, region: str, t0: float) -> None:
        spec = state.spec
        rng = user.rng
        self.user = user
        self.state = state
        self.id = spec.shard + spec.shards * len(state.workflows)
        self.caller_idx = rng.choices(range(len(state.caller_names)), state.caller_weights)[0]
        self.caller = state.caller_names[self.caller_idx]
        own = state.identities[self.caller_idx]
        self.identity: Identity = own[rng.randrange(len(own))]
        self.path = self.identity.path
        # Each workflow is its own machine: it connects from an address of its own, as pods do.
        self.source = client_address(self.id)
        self.home = region
        self.name = "token (backlog)" if kind == KIND_BACKLOG else "token (fresh)"
        home_idx = spec.regions.index(region)
        # [id, kind, home, caller, intended start, end, ok, attempts] (see loadtest.analysis)
        self.record: list[Any] = [self.id, kind, home_idx, self.caller_idx, round(t0, 4)]
        self.record += [None, 0, 0]
        state.workflows.append(self.record)

    def headers(self, attempt: int, target: str) -> list[tuple[str, str]]:
        """The DESIGN.md §4 headers of one attempt, as this profile sends them."""
        out = [("x-caller-id", self.caller), ("x-request-id", f"{self.id:x}.{attempt}")]
        out.extend(self.state.profile.headers(attempt, self.state.spec.timeout))
        if target != self.home:
            out.append(("x-origin-region", self.home))
        return out

    def set_start(self, t0: float) -> None:
        """The intended start (a blocked workflow's is the release)."""
        self.record[4] = round(t0, 4)

    # --- the azure-sdk profile: the SDK sends, this workflow records (loadtest.sdkclient) ------
    def credential(self, hold: asyncio.Event | None = None) -> Any:
        """This workflow's ManagedIdentityCredential (its identity's client id), whose
        transport adds this workflow's headers and records each attempt here (the first one
        held until `hold` is set, when given)."""
        from .sdkclient import make_credential

        spec = self.state.spec
        base = None if self.home == sdk_region(spec) else spec.targets[self.home]
        return make_credential(self.state.sdk, self, self.identity.client_id, base, hold)

    def attempt_headers(self, attempt: int) -> list[tuple[str, str]]:
        """What the harness adds to the SDK's request: who calls, and the attempt's own id."""
        return [("x-caller-id", self.caller), ("x-request-id", f"{self.id:x}.{attempt}")]

    def attempt_done(
        self, attempt: int, started: float, finished: float, code: str, ra: float | None
    ) -> None:
        """One SDK attempt ended: the same record as the lean clients' attempts."""
        self._record_attempt(attempt, self.home, started, finished, code, ra)
        self.user.environment.events.request.fire(
            request_type="GET",
            name=self.name,
            response_time=(finished - started) * 1000.0,
            response_length=0,
            result=None,
            exception=None if code == "200" else code,
            context=None,
        )

    def attempt_held(self) -> None:
        """The SDK built the first attempt ahead of the release (its `prepared` write)."""
        self.state.sdk_held += 1

    async def run_sdk(self, credential: Any = None) -> None:
        """`get_token` through the real SDK (its own retries); ok when it returned a token."""
        from .sdkclient import fetch_token

        cred = credential if credential is not None else self.credential()
        try:
            token = await fetch_token(cred, self.identity.scope)
            self.record[5] = round(time.monotonic(), 4)  # unfinished (None) if cancelled
            self.record[6] = int(token is not None)
        finally:
            await cred.close()

    async def run(self, first: Prepared | None = None) -> None:
        """Attempts until a 200, a non-retryable answer or the profile's last retry.

        `first`, when given, is attempt 0 already written on its own connection (a release).
        The workflow's connections are closed when it is done (its machine has its token).
        """
        try:
            await self._attempts(first)
        finally:
            self.user.client.release_source(self.source)

    async def _attempts(self, first: Prepared | None) -> None:
        """Attempt after attempt, each recorded; failing over (with `failover`) or staying home
        (when told so) between them, waiting as the profile says."""
        state = self.state
        profile = state.profile
        regions = state.spec.regions
        target = self.home
        stay_home = False
        for attempt in range(profile.retries + 1):
            result = await self._send(attempt, target, first)
            code = outcome_code(result)
            resp = result.response
            ra = parse_retry_after(resp.headers) if resp is not None else None
            self._record_attempt(attempt, target, result.started, result.finished, code, ra)
            if code == "200":
                self.record[5] = round(result.finished, 4)
                self.record[6] = 1
                return
            failure = _failure(result)
            if failure is None:
                break  # a 4xx other than 408/429: retrying will not help
            if attempt == profile.retries:
                break
            if resp is not None and resp.headers.get("x-sluice-no-failover") == "1":
                stay_home = True
                target = self.home
            elif state.spec.failover and not stay_home and len(regions) > 1:
                target = regions[(regions.index(target) + 1) % len(regions)]
            await asyncio.sleep(profile.delay(attempt, failure, ra, state.retry_rng))
        self.record[5] = round(time.monotonic(), 4)

    async def _send(self, attempt: int, target: str, first: Prepared | None) -> Result:
        """Attempt `attempt` to region `target` (the first one may be written already)."""
        state = self.state
        spec = state.spec
        client = self.user.client
        if attempt == 0 and first is not None:
            return await client.complete(first, name=self.name, timeout=spec.timeout)
        if state.rate_cap is not None and attempt > 0:
            # The cap paces the storm (retries), not the open-loop arrivals: a fresh first try
            # waiting behind the backlog's retries in the generator would measure the
            # generator, not the system under test.
            await state.rate_cap.take()
        return await client.get(
            self.path,
            name=self.name,
            headers=self.headers(attempt, target),
            timeout=spec.timeout,
            base_url=spec.targets[target],
            source=self.source,
        )

    def _record_attempt(
        self, attempt: int, target: str, started: float, finished: float, code: str,
        ra: float | None,
    ) -> None:  # fmt: skip
        """One attempt's record (see the module docstring); the workflow's attempt count."""
        self.state.attempts.append(
            (
                self.id,
                attempt,
                self.state.spec.regions.index(target),
                round(started, 4),
                round(finished, 4),
                code,
                None if ra is None else round(ra, 3),
            )
        )
        self.record[7] = attempt + 1


def _failure(result: Result) -> Failure | None:
    """How a failed attempt failed, as the retry policy sees it; None: not worth a retry."""
    if result.error == "timeout":
        return Failure.TIMEOUT
    if result.error is not None:
        return Failure.CONNECT
    if is_retryable_status(result.status):
        return Failure.STATUS
    return None


def sdk_region(spec: FleetSpec) -> str:
    """The region `AZURE_POD_IDENTITY_AUTHORITY_HOST` points the SDK at: the storm's."""
    return spec.backlog_region or spec.regions[0]
