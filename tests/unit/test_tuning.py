"""The internal tuning (`proxy.tuning`): the defaults in force, their reasons in docs/tuning.md,
and variants taken by the components that read them."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

from proxy.admission.estimates import Estimates
from proxy.control.signals import LatencyFloor, Patience
from proxy.tuning import (
    ADMISSION,
    CONTROL,
    DELIVERY,
    EDGE,
    GRADIENT,
    SCHEDULER,
    AdmissionTuning,
    ControlTuning,
    EdgeTuning,
    SchedulerTuning,
)

from ._admission import make_config

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "tuning.md"
INSTANCES = (ADMISSION, SCHEDULER, CONTROL, GRADIENT, DELIVERY, EDGE)


def test_the_defaults_are_the_values_the_code_ran_with() -> None:
    # Moved out of the modules unchanged: a different value is a behaviour change, and needs
    # its own commit and its own measurement.
    assert dataclasses.asdict(ADMISSION) == {
        "request_start_max": 10.0,
        "throughput_alpha": 0.2,
        "run_min": 0.5,
        "samples_kept": 10.0,
        "samples_median": 3,
        "past_knee_share": 0.5,
        "capacity_ttl": 60.0,
        "samples_known": 3,
        "fresh_headroom": 1.2,
        "fresh_burst": 0.25,
        "fresh_burst_min": 2.0,
        "patience_floor": 2.0,
        "hold_share": 0.75,
        "hold_spread": 2.0 / 3.0,
        "hold_min": 0.01,
        "prune_every": 1.0,
        "budget_buckets": 10,
        "latency_samples": 32,
        "latency_kept": 2.0,
        "booking_slack": 64,
    }
    assert dataclasses.asdict(SCHEDULER) == {"wake_chunk": 64, "expiry_slack": 1024}
    assert dataclasses.asdict(CONTROL) == {
        "expiry_step": 0.01,
        "timer_slack": 0.002,
        "probe_deadline_factor": 2.0,
        "probe_deadline_extra": 1.0,
        "saturated_ticks": 2,
        "window_buckets": 20,
        "patience_kept": 128,
        "patience_quantile": 0.1,
        "patience_samples": 16,
    }
    assert (GRADIENT.floor_confirm, GRADIENT.floor_descent) == (1.1, 0.25)
    assert (DELIVERY.floor_confirm, DELIVERY.floor_descent) == (1.1, 0.25)
    assert dataclasses.asdict(EDGE) == {"arrival_period": 0.001, "gc_check_every": 1.0}
    assert AdmissionTuning() == ADMISSION and SchedulerTuning() == SCHEDULER
    assert ControlTuning() == CONTROL and EdgeTuning() == EDGE


@pytest.mark.parametrize("tuning", INSTANCES, ids=lambda t: type(t).__name__)
def test_every_number_has_its_reason_in_the_docs(tuning: object) -> None:
    headings = re.findall(r"^### (.*)$", DOCS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    documented = {name for h in headings for name in re.findall(r"`([a-z_]+)`", h)}
    fields = {f.name for f in dataclasses.fields(tuning)}  # type: ignore[arg-type]
    assert fields <= documented, sorted(fields - documented)


def test_the_defaults_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ADMISSION.hold_share = 0.5  # type: ignore[misc]


def test_components_take_a_variant() -> None:
    config = make_config()
    est = Estimates(config, 0.0, dataclasses.replace(ADMISSION, fresh_burst_min=5.0))
    assert est.fresh_burst == 5.0
    floor = LatencyFloor(dataclasses.replace(GRADIENT, floor_descent=1.0))
    floor.observe(0.0, 0.2)
    floor.observe(1.0, 0.1)
    assert floor.value == pytest.approx(0.1)  # all the way down, not a quarter of it
    patience = Patience(1.0, dataclasses.replace(CONTROL, patience_samples=2))
    patience.observe(0.3)
    patience.observe(0.5)
    assert patience.estimate() == pytest.approx(0.3)
