"""The client fleet: orchestrators asking a token service for tokens, in one uvloop process.

Built on the Locust-style API (`loadtest.users`):
- `FreshTraffic` (an `OpenLoopUser`): Poisson arrivals at λ₀ per region, each one workflow.
- `BlockedWorkflow` (a `User`): one provisioning workflow blocked on a dependency; it opens its
  connection in `on_start`, waits for the dependency to come back (the release), fetches its
  token with its profile's retries and stops. N of them released at once is the reopening.
- `IncidentShape`: all users from the start, the run ends at the scenario's end.

A workflow needs one token; each attempt carries the DESIGN.md §4 headers its profile sends.
Backlog and fresh workflows draw callers from the same weighted list, so nothing can tell them
apart by caller id. Token requests are identical per identity, as real ones are: each caller
owns `identities_per_caller` managed identities (`loadtest.identities`, fixed by the seed), a
workflow uses one of its caller's, and its URL (resource + client id) is that identity's, byte
for byte the same as every other workflow of that identity. Only `x-request-id` differs (one
per attempt: the analysis joins wasted work on it). With `failover`, an attempt that failed
sends the next one to the other region with `x-origin-region: <home>`, unless the answer said
`x-sluice-no-failover: 1` (then the workflow stays home for good).

With the `azure-sdk` profile a workflow is Microsoft's own client instead
(`loadtest.sdkclient`): a `ManagedIdentityCredential` of its identity whose `get_token` runs the
SDK's IMDS request and retry policy, recorded attempt by attempt in the same records.

Run by the harness: `python -m loadtest.fleet SPEC.json OUT.json` (all times in the spec are
absolute `time.monotonic()` instants, which are shared by every process on Linux). A fleet too
heavy for one process (the real SDK costs ~1.5 ms of CPU per call) runs as `shards` processes,
each with its share of the backlog and of λ₀ (Poisson traffic split K ways is still Poisson),
workflow ids `shard + shards * n` (so ids and `x-request-id`s stay unique), releasing at the
same instant; `merge_outputs` joins their records.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson

from .identities import IDENTITIES_PER_CALLER, Identity, make_identities
from .profiles import Failure, Profile, is_retryable_status, make_profile, parse_retry_after
from .users import (
    Environment,
    HeadlessRunner,
    HttpClient,
    LoadTestShape,
    OpenLoopUser,
    Prepared,
    Result,
    StopUser,
    User,
    intended_start,
    task,
    write_stats_csv,
)

KIND_FRESH, KIND_BACKLOG = 0, 1
LAG_INTERVAL = 0.01  # the event-loop lag sampler's period


@dataclass
class FleetSpec:
    """What the harness asks the fleet to do (times are absolute monotonic seconds)."""

    seed: int
    regions: list[str]
    targets: dict[str, str]  # region → "http://127.0.0.1:port"
    fresh_rate: dict[str, float]  # region → λ₀
    callers: list[tuple[str, int]]
    profile: str
    timeout: float
    t_start: float
    t_end: float
    backlog: int = 0
    backlog_region: str = ""
    t_release: float | None = None
    prewarm: bool = True
    failover: bool = False
    naive_retries: int = 3
    naive_retry_delay: float = 0.05
    hostile_retries: int = 50
    hostile_rate_cap: float = 600.0
    retry_after_jitter: float = 0.1
    grace: float = 1.5
    csv_prefix: str = ""
    identities_per_caller: int = IDENTITIES_PER_CALLER
    shard: int = 0  # this process's index among `shards` fleet processes
    shards: int = 1

    @property
    def seed_key(self) -> int | str:
        """The seed of this process's random draws (the plain seed when it runs alone)."""
        return self.seed if self.shards == 1 else f"{self.seed}/{self.shard}"

    def backlog_share(self) -> int:
        """This process's part of the backlog N (the first `N mod shards` take one more)."""
        return self.backlog // self.shards + (1 if self.shard < self.backlog % self.shards else 0)

    # When set, the backlog's users are spawned from this instant instead of from t_start:
    # before t_start, so a release at t_start (no warm-up: a cold start) finds every blocked
    # workflow connected and prepared; or shortly before a late release, so their connections
    # are not idle long enough for the proxy's header timeout to close them (Sluice's
    # listen.header_read_timeout, 10 s by default).
    t_backlog_spawn: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetSpec:
        """Build from the JSON the harness wrote."""
        data = dict(data)
        data["callers"] = [tuple(c) for c in data["callers"]]
        return cls(**data)


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


def outcome_code(result: Result) -> str:
    """How an attempt ended: "200", "timeout", "connection-error" or "<status> <reason>"."""
    if result.error == "timeout":
        return "timeout"
    if result.error is not None:
        return "connection-error"
    resp = result.response
    assert resp is not None
    if resp.status == 200:
        return "200"
    reason = resp.headers.get("x-sluice-reason")
    if reason is None:
        backend = resp.headers.get("x-backend-reason")
        reason = f"backend:{backend}" if backend else "-"
    return f"{resp.status} {reason}"


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
        state = self.state
        state.attempts.append(
            (
                self.id,
                attempt,
                state.spec.regions.index(self.home),
                round(started, 4),
                round(finished, 4),
                code,
                None if ra is None else round(ra, 3),
            )
        )
        self.record[7] = attempt + 1
        self.user.environment.events.request.fire(
            request_type="GET",
            name=self.name,
            response_time=(finished - started) * 1000.0,
            response_length=0,
            result=None,
            exception=None if code == "200" else code,
            context=None,
        )

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
        state = self.state
        spec = state.spec
        profile = state.profile
        regions = spec.regions
        client = self.user.client
        record = self.record
        target = self.home
        stay_home = False
        for attempt in range(profile.retries + 1):
            if attempt == 0 and first is not None:
                result = await client.complete(first, name=self.name, timeout=spec.timeout)
            else:
                if state.rate_cap is not None and attempt > 0:
                    # The cap paces the storm (retries), not the open-loop arrivals: a fresh
                    # first try waiting behind the backlog's retries in the generator would
                    # measure the generator, not the system under test.
                    await state.rate_cap.take()
                result = await client.get(
                    self.path,
                    name=self.name,
                    headers=self.headers(attempt, target),
                    timeout=spec.timeout,
                    base_url=spec.targets[target],
                    source=self.source,
                )
            code = outcome_code(result)
            resp = result.response
            ra = parse_retry_after(resp.headers) if resp is not None else None
            state.attempts.append(
                (
                    self.id,
                    attempt,
                    regions.index(target),
                    round(result.started, 4),
                    round(result.finished, 4),
                    code,
                    None if ra is None else round(ra, 3),
                )
            )
            record[7] = attempt + 1
            if code == "200":
                record[5] = round(result.finished, 4)
                record[6] = 1
                return
            if result.error == "timeout":
                failure = Failure.TIMEOUT
            elif result.error is not None:
                failure = Failure.CONNECT
            elif is_retryable_status(result.status):
                failure = Failure.STATUS
            else:
                break  # a 4xx other than 408/429: retrying will not help
            if attempt == profile.retries:
                break
            if resp is not None and resp.headers.get("x-sluice-no-failover") == "1":
                stay_home = True
                target = self.home
            elif spec.failover and not stay_home and len(regions) > 1:
                target = regions[(regions.index(target) + 1) % len(regions)]
            await asyncio.sleep(profile.delay(attempt, failure, ra, state.retry_rng))
        record[5] = round(time.monotonic(), 4)


class FreshTraffic(OpenLoopUser):
    """Fresh token requests: Poisson arrivals at λ₀ in one region (set by `build_users`)."""

    abstract = True
    region: ClassVar[str] = ""
    state: ClassVar[FleetState]

    async def on_stop(self) -> None:
        """Report arrivals dropped at the outstanding-task bound (should stay 0)."""
        self.state.dropped_arrivals += self.dropped

    @task
    async def get_token(self) -> None:
        """One fresh workflow, latency measured from its intended start."""
        t0 = intended_start.get() or time.monotonic()
        workflow = Workflow(self, self.state, KIND_FRESH, self.region, t0)
        if self.state.profile.real_sdk:
            await workflow.run_sdk()
        else:
            await workflow.run()


class BlockedWorkflow(User):
    """One provisioning workflow blocked on its dependency; released with all the others."""

    abstract = True
    region: ClassVar[str] = ""
    state: ClassVar[FleetState]

    workflow: Workflow
    prepared: Prepared | None = None
    sdk_credential: Any = None

    async def on_start(self) -> None:
        """Become a workflow and, with `prewarm`, open its connection and encode its first
        request ahead of the release (so the release is a burst of writes, not of set-ups).
        An SDK workflow builds its credential ahead (the blocked VM exists) and, with `prewarm`,
        calls `get_token` ahead too, its first attempt held at the transport until the release;
        the SDK opens its connection then, as a real one does."""
        state = self.state
        self.workflow = Workflow(self, state, KIND_BACKLOG, self.region, state.spec.t_end)
        if state.profile.real_sdk:
            self.sdk_credential = self.workflow.credential(
                state.release if state.spec.prewarm else None
            )
        elif state.spec.prewarm:
            self.prepared = await self.client.prepare(
                "GET",
                self.workflow.path,
                headers=self.workflow.headers(0, self.region),
                base_url=state.spec.targets[self.region],
                source=self.workflow.source,
            )
            state.prepared.append(self.prepared)

    @task
    async def provision(self) -> None:
        """Wait for the dependency, get the token (with retries), done."""
        state = self.state
        if state.profile.real_sdk:
            if not state.spec.prewarm:
                await state.release.wait()
            try:
                await self.workflow.run_sdk(self.sdk_credential)  # held until the release
            finally:
                self.workflow.set_start(state.t_release or self.workflow.record[4])
            raise StopUser
        await state.release.wait()
        self.workflow.set_start(state.t_release or time.monotonic())
        first = self.prepared if self.prepared is not None and self.prepared.future else None
        await self.workflow.run(first)
        raise StopUser


class IncidentShape(LoadTestShape):
    """Every user from the start (backlog users spawned fast, then blocked); stop at the end.

    With `backlog_after`, only the first `early_users` (the fresh traffic: `build_users` puts
    its classes first, one user each) until that run time, then everyone."""

    def __init__(
        self,
        users: int,
        spawn_rate: float,
        run_time: float,
        backlog_after: float | None = None,
        early_users: int = 0,
    ) -> None:
        super().__init__()
        self.users = users
        self.spawn_rate = spawn_rate
        self.run_time = run_time
        self.backlog_after = backlog_after
        self.early_users = early_users

    def tick(self) -> tuple[int, float] | None:
        """(users, spawn rate) until `run_time`, then stop."""
        now = self.get_run_time()
        if now >= self.run_time:
            return None
        if self.backlog_after is not None and now < self.backlog_after:
            return (self.early_users, self.spawn_rate)
        return (self.users, self.spawn_rate)


def build_users(state: FleetState) -> list[type[User]]:
    """One FreshTraffic class per region with traffic, and the blocked backlog."""
    spec = state.spec
    classes: list[type[User]] = []
    for region in spec.regions:
        rate = spec.fresh_rate.get(region, 0.0)
        if rate > 0:
            attrs = {
                "rate": rate / spec.shards,
                "region": region,
                "state": state,
                "fixed_count": 1,
            }
            classes.append(type(f"FreshTraffic_{region}", (FreshTraffic,), attrs))
    if spec.backlog_share() > 0:
        attrs = {
            "region": spec.backlog_region,
            "state": state,
            "fixed_count": spec.backlog_share(),
        }
        classes.append(type("BlockedWorkflow_backlog", (BlockedWorkflow,), attrs))
    return classes


class LagSampler:
    """Samples this process's event-loop lag (how late a 10 ms sleep wakes up)."""

    def __init__(self, interval: float = LAG_INTERVAL) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (t, lag s)

    async def run(self, until: float) -> None:
        """Sample until the monotonic instant `until`."""
        while True:
            expected = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.samples.append((round(now, 4), round(max(0.0, now - expected), 5)))
            if now >= until:
                return


def sdk_region(spec: FleetSpec) -> str:
    """The region `AZURE_POD_IDENTITY_AUTHORITY_HOST` points the SDK at: the storm's."""
    return spec.backlog_region or spec.regions[0]


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_fleet(spec: FleetSpec) -> dict[str, Any]:
    """Run the whole fleet per `spec`; returns the raw records for the harness."""
    profile = make_profile(
        spec.profile,
        spec.naive_retries,
        spec.hostile_retries,
        spec.retry_after_jitter,
        naive_retry_delay=spec.naive_retry_delay,
    )
    state = FleetState(spec, profile)
    if profile.real_sdk:
        from .sdkclient import SharedSession, point_sdk_at

        point_sdk_at(spec.targets[sdk_region(spec)])
        state.sdk = SharedSession()
    # A load generator must not stall: a full collection walks every workflow and connection
    # (31 ms, seen once 3 s into a reopen at x2 with a temporary gc.callbacks logger) and
    # would be counted as the proxy's latency.
    # The run is bounded, so full collections are simply off for its length.
    gc_thresholds = gc.get_threshold()
    gc.set_threshold(gc_thresholds[0], gc_thresholds[1], 2**31 - 1)
    classes = build_users(state)
    n_users = sum(c.fixed_count for c in classes)
    env = Environment(classes, seed=spec.seed_key)
    # Backlog users spawn from t_start (or `t_backlog_spawn`, see FleetSpec), within ~2 s (the
    # first half of a shorter time ahead of the release), then sit blocked until it. SDK
    # workflows (~1.5 ms of CPU each to build and run up to the held send) spread over 60 % of
    # it: at 1,000/s they alone would saturate the process before the storm begins.
    spawn_from = spec.t_start if spec.t_backlog_spawn is None else spec.t_backlog_spawn
    ahead = (spec.t_release or spec.t_end) - max(spawn_from, time.monotonic())
    window = max(0.1, ahead * 0.6 if profile.real_sdk else min(2.0, ahead / 2.0))
    spawn_rate = max(200.0, spec.backlog_share() / window)
    runner = HeadlessRunner(env, tick_interval=0.05)
    backlog_classes = [c for c in classes if issubclass(c, BlockedWorkflow)]
    late_spawn = spec.t_backlog_spawn is not None and spec.t_backlog_spawn > spec.t_start
    if spec.t_backlog_spawn is not None and not late_spawn and backlog_classes:
        # Ahead of t_start (a short or no warm-up): the shape's first tick then finds them
        # spawned and only adds fresh traffic (any not yet spawned at t_start are added then).
        await _sleep_until(spec.t_backlog_spawn)
        await runner.start(spec.backlog_share(), spawn_rate, backlog_classes)
    await _sleep_until(spec.t_start)
    started = time.monotonic()
    env.shape = IncidentShape(
        n_users,
        spawn_rate,
        run_time=spec.t_end - started,
        backlog_after=(spec.t_backlog_spawn or 0.0) - started if late_spawn else None,
        early_users=n_users - sum(c.fixed_count for c in backlog_classes),
    )
    lag = LagSampler()
    lag_task = asyncio.create_task(lag.run(spec.t_end))

    async def release() -> None:
        assert spec.t_release is not None
        await _sleep_until(spec.t_release)
        state.t_release = time.monotonic()
        # The reopening: every prepared first attempt written in one loop, then the wake-up.
        for prepared in state.prepared:
            HttpClient.fire(prepared)
        state.release_written = time.monotonic()
        state.release.set()

    release_task = asyncio.create_task(release()) if spec.t_release is not None else None
    try:
        await runner.run(stop_grace=spec.grace)
    finally:
        if release_task is not None:
            release_task.cancel()
        lag_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag_task
        env.close()
        if state.sdk is not None:
            await state.sdk.close()
        gc.set_threshold(*gc_thresholds)
    duration = (runner.stopped_at or time.monotonic()) - started
    csv_paths: list[str] = []
    if spec.csv_prefix:
        csv_paths = [str(p) for p in write_stats_csv(env.stats, spec.csv_prefix, duration)]
    return {
        "t_started": started,
        "t_release": state.t_release,
        "t_release_written": state.release_written,
        "release_prepared": sum(1 for p in state.prepared if p.future is not None),
        "t_stopped": runner.stopped_at,
        "profile": profile.name,
        "workflows": state.workflows,
        "attempts": state.attempts,
        "lag": lag.samples,
        "dropped_arrivals": state.dropped_arrivals,
        "csv": csv_paths,
        "pid": os.getpid(),
    }


def merge_outputs(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """One fleet output from the outputs of its shards (one output is returned as is).

    Records are joined (ids are disjoint by construction), counts summed; the release is the
    earliest shard's (drain is measured from it), its writing done when the last shard's was;
    lag samples of every shard count alike.
    """
    if len(outs) == 1:
        return outs[0]
    releases = [o["t_release"] for o in outs if o.get("t_release") is not None]
    written = [o["t_release_written"] for o in outs if o.get("t_release_written") is not None]
    stopped = [o["t_stopped"] for o in outs if o.get("t_stopped") is not None]
    return {
        "t_started": min(o["t_started"] for o in outs),
        "t_release": min(releases) if releases else None,
        "t_release_written": max(written) if written else None,
        "release_prepared": sum(o.get("release_prepared", 0) for o in outs),
        "t_stopped": max(stopped) if stopped else None,
        "profile": outs[0]["profile"],
        "workflows": sorted((w for o in outs for w in o["workflows"]), key=lambda w: w[0]),
        "attempts": sorted((a for o in outs for a in o["attempts"]), key=lambda a: a[3]),
        "lag": sorted((x for o in outs for x in o["lag"]), key=lambda x: x[0]),
        "dropped_arrivals": sum(o.get("dropped_arrivals", 0) for o in outs),
        "csv": [p for o in outs for p in o.get("csv", [])],
        "pid": [o.get("pid") for o in outs],
        "shards": len(outs),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m loadtest.fleet SPEC.json OUT.json`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m loadtest.fleet SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = FleetSpec.from_json(orjson.loads(Path(args[0]).read_bytes()))
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        out = runner.run(run_fleet(spec))
    Path(args[1]).write_bytes(orjson.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
