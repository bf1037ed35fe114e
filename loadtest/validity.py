"""Whether a run measured the system rather than the load generator: the generator's loop lag
and dropped arrivals (which void it), CPU figures and the warnings they deserve (pure)."""

from __future__ import annotations

from typing import Any

from .run_data import RunData
from .stats import percentile

LAG_LIMIT_MS = 20.0  # a run whose generator lag p99 passes this measures the generator
FLEET_CPU_WARN = 0.7  # share of one core above which the generator is close to saturating
MACHINE_BUSY_WARN = 1.8  # cores (of 2) busy over the run: other work competes for the CPU


def run_validity(run: RunData, notes: list[str]) -> dict[str, Any]:
    """Whether the run measured the system rather than the generator (its loop lag, dropped
    arrivals), with CPU figures; what only deserves a warning is added to `notes`."""
    t_start, t_end = run.t_start, run.t_end
    lags = [lag * 1000.0 for t, lag in run.fleet.get("lag", []) if t_start <= t <= t_end]
    lag_p99 = percentile(lags, 99)
    invalid: list[str] = []
    if lag_p99 is not None and lag_p99 > LAG_LIMIT_MS:
        invalid.append(f"generator loop lag p99 {lag_p99:.1f} ms > {LAG_LIMIT_MS:.0f} ms")
    if run.fleet.get("dropped_arrivals"):
        invalid.append(f"{run.fleet['dropped_arrivals']} arrivals dropped by the generator")
    late = run.fleet.get("t_started", t_start) - t_start
    if late > 0.1:
        notes.append(f"generator started {late * 1000:.0f} ms late")
    if run.machine_busy_cores is not None and run.machine_busy_cores > MACHINE_BUSY_WARN:
        own = sum(run.cpu.values())
        notes.append(
            f"machine near saturation: {run.machine_busy_cores:.2f} cores busy, "
            f"{own:.2f} of them this run's processes"
        )
    fleet_cpus = [v for k, v in run.cpu.items() if k == "fleet" or k.startswith("fleet-")]
    fleet_cpu = max(fleet_cpus, default=None)  # per process: each has one core at most
    if fleet_cpu is not None and fleet_cpu > FLEET_CPU_WARN:
        notes.append(f"generator used {fleet_cpu:.0%} of a core (close to saturating)")
    return {
        "valid": not invalid,
        "invalid_reasons": invalid,
        "loop_lag_p50_ms": percentile(lags, 50),
        "loop_lag_p99_ms": lag_p99,
        "loop_lag_max_ms": max(lags) if lags else None,
        "cpu_share": run.cpu,
        "machine_busy_cores": run.machine_busy_cores,
        "dropped_arrivals": run.fleet.get("dropped_arrivals", 0),
    }
