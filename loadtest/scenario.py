"""Scenario files (`loadtest/scenarios/NAME.yaml`): schema, loading and capacity scaling.

Each scenario names its trigger (`reopen`: a blocked backlog released at once over a healthy
backend; `outage`: the backend fails for a while under steady retrying load, then comes back),
its regions, the backend, the clients, the traffic and the timing. The Sluice config it runs
with sits beside it as `NAME.sluice.yaml` and must not state the backend's capacity.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .profiles import PROFILE_NAMES

SCENARIO_DIR = Path(__file__).parent / "scenarios"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$")


def parse_duration(value: Any) -> float:
    """`250ms`, `5s`, `2m` → seconds (bare numbers are refused: the unit must be said)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration needs a unit, like '250ms' or '5s' (got {value!r})")
    m = _DURATION_RE.match(value)
    if m is None:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapacityStep(_Strict):
    """A step in the backend's capacity: `workers` from `at` after t0's planned instant (the
    release of `reopen`; the end of the outage of `outage`)."""

    at: Duration
    workers: int = Field(ge=1)


class BackendSpec(_Strict):
    """The simulated backend of each region."""

    workers: int = Field(10, ge=1)
    service_time: Duration = 0.05
    queue_limit: int = Field(1000, ge=0)
    thrash: float = Field(0.5, ge=0)
    jitter: float = Field(0.1, ge=0, lt=1)
    capacity_step: CapacityStep | None = None

    @property
    def capacity(self) -> float:
        """Nominal capacity C (req/s) of one region's backend."""
        return self.workers / self.service_time


class CallerSpec(_Strict):
    """A named caller (an orchestrator) and its share of the traffic."""

    name: str = Field(pattern=r"^[A-Za-z0-9._:-]+$")
    weight: int = Field(1, ge=1)


class ClientSpec(_Strict):
    """How the clients behave."""

    profile: str = "naive"
    timeout: Duration = 1.0
    naive_retries: int = Field(3, ge=0)
    naive_retry_delay: Duration = 0.05  # `naive`: the wait before a retry after an error
    hostile_retries: int = Field(50, ge=0)
    hostile_rate_cap: float = Field(600.0, gt=0)
    retry_after_jitter: Duration = 0.1
    failover: bool = False
    prewarm: bool = True
    identities_per_caller: int = Field(4, ge=1)
    fleet_processes: int = Field(
        0, ge=0, description="client processes; 0: one, or as many as the azure-sdk profile needs"
    )
    callers: list[CallerSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_profile(self) -> ClientSpec:
        if self.profile not in PROFILE_NAMES:
            raise ValueError(f"profile must be one of {', '.join(PROFILE_NAMES)}")
        return self


class TrafficSpec(_Strict):
    """Fresh traffic λ₀ per region and the blocked backlog N."""

    fresh_rate: float | dict[str, float] = 120.0
    backlog: int = Field(0, ge=0)
    backlog_region: str | None = None


class TimingSpec(_Strict):
    """The run's clock: warm-up before the trigger, observation after t0."""

    warmup: Duration = 6.0
    outage: Duration = 0.0
    observe: Duration = 24.0
    last_window: Duration = 5.0
    grace: Duration = 1.5


class Scenario(_Strict):
    """One scenario file."""

    name: str
    description: str = ""
    trigger: Literal["reopen", "outage"]
    regions: list[str] = Field(["east"], min_length=1, max_length=2)
    backend: BackendSpec = BackendSpec()
    clients: ClientSpec
    traffic: TrafficSpec = TrafficSpec()
    timing: TimingSpec = TimingSpec()
    scale_load_with_capacity: bool = Field(
        True, description="--capacity-scale also scales λ₀ and N (the same storm, relatively)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.trigger == "outage" and self.timing.outage <= 0:
            raise ValueError("timing.outage must be set for an outage scenario")
        if self.traffic.backlog and (self.traffic.backlog_region or self.regions[0]) not in (
            self.regions
        ):
            raise ValueError("traffic.backlog_region must be one of regions")
        if isinstance(self.traffic.fresh_rate, dict):
            unknown = set(self.traffic.fresh_rate) - set(self.regions)
            if unknown:
                raise ValueError(f"traffic.fresh_rate names unknown regions: {sorted(unknown)}")
        if self.timing.last_window > self.timing.observe:
            raise ValueError("timing.last_window must fit in timing.observe")
        return self

    # --- derived figures --------------------------------------------------------------------
    def fresh_rate(self, region: str) -> float:
        """λ₀ of `region`."""
        rate = self.traffic.fresh_rate
        return rate.get(region, 0.0) if isinstance(rate, dict) else rate

    @property
    def home(self) -> str:
        """The region that takes the storm."""
        return self.traffic.backlog_region or self.regions[0]

    def scaled(self, factor: float) -> Scenario:
        """The same scenario on `factor` x the workers (and, by default, x λ₀ and x N)."""
        if factor == 1:
            return self
        workers = max(1, round(self.backend.workers * factor))
        data = self.model_dump()
        data["backend"]["workers"] = workers
        step = data["backend"]["capacity_step"]
        if step is not None:
            step["workers"] = max(1, round(step["workers"] * factor))
        if self.scale_load_with_capacity:
            real = workers / self.backend.workers
            rate = data["traffic"]["fresh_rate"]
            if isinstance(rate, dict):
                data["traffic"]["fresh_rate"] = {k: v * real for k, v in rate.items()}
            else:
                data["traffic"]["fresh_rate"] = rate * real
            data["traffic"]["backlog"] = round(self.traffic.backlog * real)
            data["clients"]["hostile_rate_cap"] = self.clients.hostile_rate_cap * real
        return Scenario.model_validate(_durations_back(data))

    def with_profile(self, profile: str) -> Scenario:
        """The same scenario with another client profile."""
        data = self.model_dump()
        data["clients"]["profile"] = profile
        return Scenario.model_validate(_durations_back(data))

    def with_timing(self, **overrides: float) -> Scenario:
        """The same scenario with some timing fields replaced (seconds)."""
        data = self.model_dump()
        data["timing"].update(overrides)
        return Scenario.model_validate(_durations_back(data))


def _durations_back(data: dict[str, Any]) -> dict[str, Any]:
    """model_dump gives float seconds; turn duration fields back into the file syntax."""
    for section, keys in (
        ("backend", ("service_time",)),
        ("clients", ("timeout", "retry_after_jitter", "naive_retry_delay")),
        ("timing", ("warmup", "outage", "observe", "last_window", "grace")),
    ):
        for key in keys:
            data[section][key] = f"{data[section][key] * 1000:.6f}ms"
    step = data["backend"].get("capacity_step")
    if step is not None:
        step["at"] = f"{step['at'] * 1000:.6f}ms"
    return data


class ScenarioError(Exception):
    """A scenario file is missing or invalid (the message names the field)."""


def scenario_path(name: str) -> Path:
    """Where scenario `name` lives (a path is accepted as is)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    return SCENARIO_DIR / f"{name}.yaml"


def sluice_config_path(scenario_file: Path) -> Path:
    """The Sluice config that runs beside a scenario: `NAME.sluice.yaml`."""
    return scenario_file.with_name(scenario_file.stem + ".sluice.yaml")


def list_scenarios() -> list[str]:
    """Names of the shipped scenarios."""
    return sorted(
        p.stem for p in SCENARIO_DIR.glob("*.yaml") if not p.name.endswith(".sluice.yaml")
    )


def load_scenario(name: str) -> tuple[Scenario, Path]:
    """Load and validate a scenario by name (or path); returns it and its file."""
    path = scenario_path(name)
    if not path.exists():
        raise ScenarioError(f"no scenario {name!r} (have: {', '.join(list_scenarios()) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Scenario.model_validate(data), path
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
        raise ScenarioError(f"{path}: invalid scenario\n" + "\n".join(lines)) from None
