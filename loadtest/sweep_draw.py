"""The storm sweep's draws: one seed, one `reopen` scenario within bounds (see loadtest.sweep).

`draw(seed)` is deterministic: `random.Random(seed)` draws every parameter in a fixed order on
every try, redrawn until the draw meets every bound (the constants below). A draw also fixes the
run's length (`observe_for`) and the drain bound its polite clients are held to (`drain_bound`),
both of which depend on the Sluice config's limiter.initial.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

from .arm_schedule import FLEET_STARTUP, backlog_lead
from .scenario import Scenario

# --- the draw's bounds ---------------------------------------------------------------------
WORKERS = (5, 100)
SERVICE_TIME = (0.020, 0.300)  # s
CAPACITY = (50.0, 1000.0)  # req/s
THRASH = (0.5, 2.0)  # the simulator's default (0.5) is the lower bound
BACKLOG_S = (2.0, 10.0)  # N in seconds of C
FRESH_SHARE = (0.0, 0.6)  # λ₀ / C
P_NO_FRESH = 0.15
WARMUP = (0.0, 60.0)  # s
P_COLD = 0.2
CALLERS = (1, 50)
CALLER_WEIGHT = (1, 4)
KINDS: tuple[str, ...] = ("naive", "sdk", "sdk-noheader", "azure-sdk", "hostile")
POLITE: tuple[str, ...] = ("sdk", "sdk-noheader", "azure-sdk")
AZURE_SDK = "azure-sdk"
NAIVE_RETRY_DELAY = (0.05, 1.0)  # s
NAIVE_RETRIES = 3
TIMEOUT_S = (0.5, 5.0)
P_STEP = 0.5  # half the draws ask for a step; halving and doubling equally often
STEP_MIN_DRAIN = 6.0  # s: a step needs a drain this long (a middle after the allowance)
OFFERED_MAX = 2000.0  # attempts/s the clients may offer at worst
AZURE_CLIENTS_MAX = 2000
AZURE_CAPACITY_MAX = 400.0
HOSTILE_CAP_FACTOR = 3.0  # hostile retries capped at up to 3 x C (≥ 1 x C)
SDK_FIRST_RETRY_MIN = 0.8 * (1 - 0.2)  # s: the SDK profiles' first backoff, at its shortest
MAX_TRIES = 10_000
CALLER_NAMES: tuple[str, ...] = (
    "orchestrator-a",
    "orchestrator-b",
    "orchestrator-c",
    "orchestrator-d",
    *(f"orchestrator-{i:02d}" for i in range(5, CALLERS[1] + 1)),
)

# --- the run's length ------------------------------------------------------------------------
OBSERVE_FACTOR = 2.0  # observe 2 x the ideal drain + the allowance + a margin …
OBSERVE_MARGIN = 6.0
OBSERVE_MIN = 12.0
OBSERVE_MAX = 60.0  # … capped (the bound 1.2 x drain + allowance always fits: ≤ ~33 s)
GRACE = 1.5
LAST_WINDOW = 5.0
RUN_OVERHEAD_S = 7.0  # start-up, check-config, teardown, analysis, plot (measured: ~6 s)

DRAIN_FACTOR = 1.20  # polite clients' drain ≤ 1.20 x the ideal drain + the cold-start allowance


@dataclass(frozen=True)
class Draw:
    """One seed's scenario parameters (times in seconds, rates in req/s)."""

    seed: int
    kind: str  # the client profile
    workers: int
    service_time: float
    thrash: float
    backlog_s: float
    backlog: int  # N
    fresh_share: float
    fresh_rate: float  # λ₀
    warmup: float
    callers: tuple[tuple[str, int], ...]
    naive_retry_delay: float  # drawn every time; used by `naive` only
    timeout: float
    step: str  # "none", "halve", "double"
    step_workers: int | None
    step_at: float | None  # s after the release
    hostile_rate_cap: float
    offered: float  # attempts/s at worst (offered_at_worst)
    tries: int  # draws until this one met every bound

    @property
    def capacity(self) -> float:
        """C before any step."""
        return self.workers / self.service_time

    @property
    def capacity_after(self) -> float:
        """C after the step (C when there is none)."""
        return (self.step_workers or self.workers) / self.service_time

    @property
    def ideal_drain(self) -> float:
        """N over the spare capacity, piecewise across the step."""
        return ideal_drain(
            self.backlog, self.capacity, self.capacity_after, self.fresh_rate, self.step_at
        )


def ideal_drain(
    n: int, cap: float, cap_after: float, lam: float, step_at: float | None = None
) -> float:
    """Seconds N takes at C - λ₀, then (from `step_at`) at the stepped C - λ₀."""
    spare = cap - lam
    if step_at is None or n <= spare * step_at:
        return n / spare
    return step_at + (n - spare * step_at) / (cap_after - lam)


def attempts_in_first_second(kind: str, retry_delay: float, timeout: float) -> int:
    """Attempts one backlog workflow of `kind` can send in its first second if every attempt is
    refused at once (or times out) without a Retry-After it honours; `hostile` is capped apart."""
    if kind == "naive":
        cycle = min(retry_delay, timeout)  # 50 ms … after an error; at once after a timeout
        return 1 + min(NAIVE_RETRIES, math.ceil(1.0 / cycle - 1e-9) - 1)
    if kind in POLITE:
        return 1 + math.ceil(1.0 / SDK_FIRST_RETRY_MIN - 1e-9) - 1  # 2: backoff ≥ 0.64 s
    return 1


def offered_at_worst(kind: str, n: int, lam: float, retry_delay: float, timeout: float,
                     hostile_cap: float) -> float:  # fmt: skip
    """Attempts per second the clients offer at worst: λ₀ plus the backlog's first second."""
    if kind == "hostile":
        return lam + n + hostile_cap
    return lam + n * attempts_in_first_second(kind, retry_delay, timeout)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


class _Params(NamedTuple):
    """One try's raw parameters, before the bounds are checked."""

    workers: int
    service_time: float
    thrash: float
    backlog_s: float
    share: float
    warmup: float
    n_callers: int
    retry_delay: float
    timeout: float
    step_u: float


def _draw_params(rng: random.Random) -> _Params:
    """Every parameter on every try, in this order, so a draw depends only on the seed.
    Log-uniform, so C = workers / service time spreads over its whole range."""
    workers = round(_log_uniform(rng, *WORKERS))
    service_time = round(_log_uniform(rng, *SERVICE_TIME), 3)
    thrash = round(rng.uniform(*THRASH), 2)
    backlog_s = round(rng.uniform(*BACKLOG_S), 2)
    no_fresh = rng.random() < P_NO_FRESH
    share = 0.0 if no_fresh else round(rng.uniform(*FRESH_SHARE), 3)
    cold = rng.random() < P_COLD
    warmup = 0.0 if cold else round(rng.uniform(*WARMUP), 1)
    n_callers = rng.randint(*CALLERS)
    retry_delay = round(rng.uniform(*NAIVE_RETRY_DELAY), 3)
    timeout = round(rng.uniform(*TIMEOUT_S), 2)
    step_u = rng.random()
    return _Params(
        workers, service_time, thrash, backlog_s, share, warmup, n_callers, retry_delay,
        timeout, step_u,
    )  # fmt: skip


def _within_bounds(seed: int, kind: str, p: _Params, tries: int) -> Draw | None:
    """The draw these parameters make, or None when it breaks a bound (then redrawn)."""
    cap = p.workers / p.service_time
    if not CAPACITY[0] <= cap <= CAPACITY[1]:
        return None
    step = "none" if p.step_u >= P_STEP else ("halve" if p.step_u < P_STEP / 2 else "double")
    step_workers = {"none": None, "halve": p.workers // 2, "double": p.workers * 2}[step]
    cap_after = (step_workers or p.workers) / p.service_time
    cap_low, cap_high = min(cap, cap_after), max(cap, cap_after)
    lam = round(p.share * cap_low, 1)
    n = round(p.backlog_s * cap)
    drain0 = n / (cap - lam)
    step_at = None
    if step != "none":
        if drain0 < STEP_MIN_DRAIN:
            return None
        step_at = round(drain0 / 2, 1)
    hostile_cap = round(min(HOSTILE_CAP_FACTOR * cap_high, OFFERED_MAX - lam - n))
    if kind == "hostile" and hostile_cap < cap_high:
        return None
    offered = offered_at_worst(kind, n, lam, p.retry_delay, p.timeout, hostile_cap)
    if offered > OFFERED_MAX:
        return None
    if kind == AZURE_SDK and (
        cap_high > AZURE_CAPACITY_MAX or n + lam * p.timeout > AZURE_CLIENTS_MAX
    ):
        return None
    weights = random.Random(f"{seed}:callers")
    callers = tuple((name, weights.randint(*CALLER_WEIGHT)) for name in CALLER_NAMES[: p.n_callers])
    return Draw(
        seed=seed, kind=kind, workers=p.workers, service_time=p.service_time, thrash=p.thrash,
        backlog_s=p.backlog_s, backlog=n, fresh_share=p.share, fresh_rate=lam, warmup=p.warmup,
        callers=callers, naive_retry_delay=p.retry_delay, timeout=p.timeout, step=step,
        step_workers=step_workers, step_at=step_at,
        hostile_rate_cap=float(hostile_cap) if kind == "hostile" else 600.0,
        offered=round(offered, 1), tries=tries,
    )  # fmt: skip


def draw(seed: int) -> Draw:
    """The scenario of `seed` (deterministic; see loadtest.sweep for the bounds)."""
    rng = random.Random(seed)
    kind = rng.choice(KINDS)
    for tries in range(1, MAX_TRIES + 1):
        found = _within_bounds(seed, kind, _draw_params(rng), tries)
        if found is not None:
            return found
    raise RuntimeError(f"seed {seed}: no draw met the bounds in {MAX_TRIES} tries")


def cold_start_allowance(d: Draw, initial: int) -> float:
    """2 x service time x log₂(max(1, workers / limiter.initial)): the limiter's slow start."""
    return 2.0 * d.service_time * math.log2(max(1.0, d.workers / initial))


def drain_bound(d: Draw, initial: int) -> float:
    """The polite clients' drain target: 1.20 x the ideal drain + the cold-start allowance."""
    return DRAIN_FACTOR * d.ideal_drain + cold_start_allowance(d, initial)


def observe_for(d: Draw, initial: int) -> float:
    """Seconds observed after the release: 2 x the ideal drain + the allowance + a margin,
    within [12, 60] and never shorter than the drain bound + 3 s."""
    allowance = cold_start_allowance(d, initial)
    want = OBSERVE_FACTOR * d.ideal_drain + allowance + OBSERVE_MARGIN
    want = min(OBSERVE_MAX, max(OBSERVE_MIN, want))
    return round(max(want, drain_bound(d, initial) + 3.0), 1)


def scenario_data(d: Draw, initial: int) -> dict[str, Any]:
    """The drawn scenario as the YAML document of `reopen.yaml`'s schema."""
    step = (
        {"at": f"{d.step_at * 1000:.0f}ms", "workers": d.step_workers}
        if d.step != "none" and d.step_at is not None
        else None
    )
    return {
        "name": f"sweep-{d.seed:02d}",
        "description": f"storm sweep, seed {d.seed}: {describe(d)}",
        "trigger": "reopen",
        "regions": ["east"],
        "backend": {
            "workers": d.workers,
            "service_time": f"{d.service_time * 1000:.0f}ms",
            "queue_limit": 1000,
            "thrash": d.thrash,
            "jitter": 0.1,
            "capacity_step": step,
        },
        "clients": {
            "profile": d.kind,
            "timeout": f"{d.timeout * 1000:.0f}ms",
            "naive_retries": NAIVE_RETRIES,
            "naive_retry_delay": f"{d.naive_retry_delay * 1000:.0f}ms",
            "hostile_retries": 50,
            "hostile_rate_cap": d.hostile_rate_cap,
            "retry_after_jitter": "100ms",
            "failover": False,
            "prewarm": True,
            "callers": [{"name": name, "weight": w} for name, w in d.callers],
        },
        "traffic": {"fresh_rate": d.fresh_rate, "backlog": d.backlog},
        "timing": {
            "warmup": f"{d.warmup * 1000:.0f}ms",
            "observe": f"{observe_for(d, initial) * 1000:.0f}ms",
            "last_window": f"{LAST_WINDOW:g}s",
            "grace": f"{GRACE:g}s",
        },
    }


def scenario_for(d: Draw, initial: int) -> Scenario:
    """The drawn scenario as an in-memory Scenario (validated like a file)."""
    return Scenario.model_validate(scenario_data(d, initial))


def expected_seconds(d: Draw, initial: int) -> float:
    """Rough wall time of one run."""
    sc = scenario_for(d, initial)
    t = sc.timing
    return FLEET_STARTUP + backlog_lead(sc) + t.warmup + t.observe + t.grace + RUN_OVERHEAD_S


def describe(d: Draw) -> str:
    """One line: the drawn parameters."""
    step = "" if d.step == "none" else f", {d.step} to {d.step_workers} at +{d.step_at:g} s"
    delay = f" delay {d.naive_retry_delay:g} s" if d.kind == "naive" else ""
    return (
        f"{d.kind}{delay}, T {d.timeout:g} s, {d.workers}\u00d7{d.service_time * 1000:.0f} ms "
        f"(C {d.capacity:.0f}), thrash {d.thrash:g}, N {d.backlog} ({d.backlog_s:g} s of C), "
        f"λ₀ {d.fresh_rate:g}, warm-up {d.warmup:g} s, {len(d.callers)} callers{step}"
    )
