"""The limit in force per mode (admission/in_force.py), pure."""

from __future__ import annotations

from proxy.admission.in_force import limit_in_force
from proxy.control.modes import Mode

from ._admission import make_config

CFG = make_config({"recovery": {"batch_size": 8}, "modes": {"outage_trickle": 3}})


def test_normal_and_shield_use_the_learned_limit() -> None:
    for mode in (Mode.NORMAL, Mode.SHIELD):
        assert limit_in_force(mode, 40, 5, 12, True, CFG) == 40
        assert limit_in_force(mode, 40, 5, 12, False, CFG) == 40


def test_recovery_releases_at_most_a_batch_per_tick_within_the_limit() -> None:
    assert limit_in_force(Mode.RECOVERY, 40, 5, 5, True, CFG) == 13  # in flight + batch
    assert limit_in_force(Mode.RECOVERY, 10, 5, 5, True, CFG) == 10  # never past the limit


def test_recovery_between_ticks_only_comes_down() -> None:
    # A reload or a command is not a tick: no batch out of turn, but a lower limit holds.
    assert limit_in_force(Mode.RECOVERY, 40, 30, 13, False, CFG) == 13
    assert limit_in_force(Mode.RECOVERY, 9, 30, 13, False, CFG) == 9


def test_outage_lets_only_the_trickle_through() -> None:
    assert limit_in_force(Mode.OUTAGE, 40, 0, 40, True, CFG) == 3
    assert limit_in_force(Mode.OUTAGE, 2, 0, 40, True, CFG) == 2
