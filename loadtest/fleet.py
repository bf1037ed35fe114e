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

Modules: fleet_spec (the spec and `merge_outputs`: what the harness needs), fleet_workflow (one
workflow and its records), and this one (the users, the shape and the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson

from .fleet_spec import FleetSpec
from .fleet_workflow import KIND_BACKLOG, KIND_FRESH, FleetState, Workflow, sdk_region
from .profiles import make_profile
from .users import OpenLoopUser, StopUser, User, intended_start, task
from .users_client import HttpClient, Prepared
from .users_runner import Environment, HeadlessRunner, LoadTestShape
from .users_stats import write_stats_csv

LAG_INTERVAL = 0.01  # the event-loop lag sampler's period


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


def _release_prepared(state: FleetState) -> int | None:
    """First attempts ready at the release: written on connections opened ahead, or for the
    real SDK built and held at its transport (which opens its connection then, as a real
    one does). None when nothing is prepared ahead (no `prewarm`, or no backlog)."""
    if not state.spec.prewarm or not state.spec.backlog:
        return None
    if state.profile.real_sdk:
        return state.sdk_held
    return sum(1 for p in state.prepared if p.future is not None)


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
    with _full_collections_off():
        classes = build_users(state)
        env = Environment(classes, seed=spec.seed_key)
        runner = HeadlessRunner(env, tick_interval=0.05)
        started = await _spawn(spec, state, env, runner, classes)
        lag = LagSampler()
        lag_task = asyncio.create_task(lag.run(spec.t_end))
        release_task = None
        if spec.t_release is not None:
            release_task = asyncio.create_task(_release(spec.t_release, state))
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
    duration = (runner.stopped_at or time.monotonic()) - started
    csv_paths: list[str] = []
    if spec.csv_prefix:
        csv_paths = [str(p) for p in write_stats_csv(env.stats, spec.csv_prefix, duration)]
    return {
        "t_started": started,
        "t_release": state.t_release,
        "t_release_written": state.release_written,
        "release_prepared": _release_prepared(state),
        "t_stopped": runner.stopped_at,
        "profile": profile.name,
        "workflows": state.workflows,
        "attempts": state.attempts,
        "lag": lag.samples,
        "dropped_arrivals": state.dropped_arrivals,
        "csv": csv_paths,
        "pid": os.getpid(),
    }


@contextlib.contextmanager
def _full_collections_off() -> Iterator[None]:
    """No full (generation 2) garbage collection meanwhile.

    A load generator must not stall: a full collection walks every workflow and connection
    (31 ms, seen once 3 s into a reopen at x2 with a temporary gc.callbacks logger) and would be
    counted as the proxy's latency. The run is bounded, so they are simply off for its length.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 2**31 - 1)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


async def _spawn(
    spec: FleetSpec,
    state: FleetState,
    env: Environment,
    runner: HeadlessRunner,
    classes: list[type[User]],
) -> float:
    """The backlog spawned ahead when it must be, then at `t_start` the shape that brings
    every user in; returns when the run started."""
    n_users = sum(c.fixed_count for c in classes)
    # Backlog users spawn from t_start (or `t_backlog_spawn`, see FleetSpec), within ~2 s (the
    # first half of a shorter time ahead of the release), then sit blocked until it. SDK
    # workflows (~1.5 ms of CPU each to build and run up to the held send) spread over 60 % of
    # it: at 1,000/s they alone would saturate the process before the storm begins.
    spawn_from = spec.t_start if spec.t_backlog_spawn is None else spec.t_backlog_spawn
    ahead = (spec.t_release or spec.t_end) - max(spawn_from, time.monotonic())
    window = max(0.1, ahead * 0.6 if state.profile.real_sdk else min(2.0, ahead / 2.0))
    spawn_rate = max(200.0, spec.backlog_share() / window)
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
    return started


async def _release(t_release: float, state: FleetState) -> None:
    """The reopening, at `t_release`: every prepared first attempt written in one loop, then
    every blocked workflow woken."""
    await _sleep_until(t_release)
    state.t_release = time.monotonic()
    for prepared in state.prepared:
        HttpClient.fire(prepared)
    state.release_written = time.monotonic()
    state.release.set()


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
