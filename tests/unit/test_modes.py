"""The mode controller: the transition table, and the policy that fires events (fake time)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.control.mode_table import (
    OPERATOR_EVENTS,
    REASON_DRAINED,
    REASON_ERRORS,
    REASON_FLEET,
    REASON_LOADED,
    REASON_PROBES,
    REASON_QUEUE,
    REASON_RETRIES,
    REASON_SHIELD_EXPIRED,
    REASON_SURGE,
    TRANSITION_REASONS,
    TRANSITIONS,
    Event,
    IllegalTransition,
    Mode,
    next_mode,
)
from proxy.control.modes import ModeController, Snapshot
from proxy.control.signals import HealthView

from ._admission import make_config

T0 = 1000.0


def health(**kw: int) -> HealthView:
    base = {
        "ok": 100,
        "pushback": 0,
        "timeouts": 0,
        "broken": 0,
        "probe_ok_streak": 0,
        "probe_fail_streak": 0,
    }
    base.update(kw)
    return HealthView(**base)


CALM = Snapshot(
    health=health(),
    queue_depth=0,
    arrival_rate=50.0,
    surge_ratio=1.0,
    retry_share=0.0,
    backlog=False,
    saturated=False,
    limit_growing=False,
)
BROKEN = replace(CALM, health=health(ok=2, broken=20))


def controller(extra: dict[str, Any] | None = None, now: float = T0) -> ModeController:
    cfg = {"modes": {"min_dwell": "2s", "startup_window": "0s"}, "recovery": {"hold": "5s"}}
    if extra:
        for k, v in extra.items():
            cfg.setdefault(k, {}).update(v)
    return ModeController(make_config(cfg), now)


# --- the table -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("event", list(Event))
def test_every_pair_is_either_in_the_table_or_illegal(mode: Mode, event: Event) -> None:
    if event in TRANSITIONS[mode]:
        assert next_mode(mode, event) is TRANSITIONS[mode][event]
    else:
        with pytest.raises(IllegalTransition, match=event.value):
            next_mode(mode, event)


def test_shield_exits_only_to_recovery() -> None:
    assert set(TRANSITIONS[Mode.SHIELD].values()) <= {Mode.RECOVERY, Mode.SHIELD}
    with pytest.raises(IllegalTransition):
        next_mode(Mode.SHIELD, Event.OPERATOR_NORMAL)
    with pytest.raises(IllegalTransition):
        next_mode(Mode.SHIELD, Event.CALM)


def test_every_mode_is_reachable_and_can_be_left() -> None:
    reachable = {to for moves in TRANSITIONS.values() for to in moves.values()}
    assert reachable == set(Mode)
    for mode in Mode:
        assert any(to is not mode for to in TRANSITIONS[mode].values())


def test_operator_can_always_shield() -> None:
    for mode in Mode:
        assert next_mode(mode, Event.OPERATOR_SHIELD) is Mode.SHIELD
    assert Event.OPERATOR_SHIELD in OPERATOR_EVENTS


def test_apply_records_history_bounded() -> None:
    mc = controller({"modes": {"transitions_kept": 3}})
    t = T0
    for _ in range(5):
        t += 1
        mc.apply(Event.OPERATOR_RECOVERY, t, "operator")
        t += 1
        mc.apply(Event.OPERATOR_NORMAL, t, "operator")
    assert len(mc.history) == 3
    assert mc.history[-1].to_mode is Mode.NORMAL
    assert mc.history[-1].to_dict(t + 1)["seconds_ago"] == 1.0


def test_illegal_apply_leaves_state_alone() -> None:
    mc = controller()
    with pytest.raises(IllegalTransition):
        mc.apply(Event.CALM, T0 + 10, REASON_DRAINED)
    assert mc.state is Mode.NORMAL
    assert not mc.history


# --- NORMAL ----------------------------------------------------------------------------------
def test_broken_upstream_means_outage_after_dwell() -> None:
    mc = controller()
    assert mc.evaluate(BROKEN, T0 + 1) is None  # min dwell since start
    tr = mc.evaluate(BROKEN, T0 + 2.5)
    assert tr is not None
    assert (tr.from_mode, tr.to_mode, tr.reason) == (Mode.NORMAL, Mode.OUTAGE, REASON_ERRORS)
    assert tr.reason in TRANSITION_REASONS


def test_overload_is_not_an_outage() -> None:
    mc = controller()
    busy = replace(CALM, health=health(ok=10, pushback=60, timeouts=40))
    for i in range(100):
        assert mc.evaluate(busy, T0 + 3 + i) is None
    assert mc.state is Mode.NORMAL


def test_failed_probes_count_only_when_nothing_answers() -> None:
    mc = controller()
    answering = replace(CALM, health=health(ok=0, pushback=5, probe_fail_streak=5))
    assert mc.evaluate(answering, T0 + 3) is None
    silent = replace(CALM, health=health(ok=0, timeouts=5, probe_fail_streak=2))
    tr = mc.evaluate(silent, T0 + 4)
    assert tr is not None and tr.to_mode is Mode.OUTAGE and tr.reason == REASON_PROBES


def test_too_few_samples_are_not_an_outage() -> None:
    mc = controller()
    few = replace(CALM, health=health(ok=0, broken=5))
    assert mc.evaluate(few, T0 + 3) is None


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        (replace(CALM, queue_depth=64), REASON_QUEUE),
        (replace(CALM, arrival_rate=300.0, surge_ratio=3.5, saturated=True), REASON_SURGE),
        (replace(CALM, arrival_rate=300.0, retry_share=0.6, queue_depth=1), REASON_RETRIES),
    ],
)
def test_recovery_entry_signals(snapshot: Snapshot, reason: str) -> None:
    mc = controller()
    tr = mc.evaluate(snapshot, T0 + 3)
    assert tr is not None and tr.to_mode is Mode.RECOVERY and tr.reason == reason


def test_a_surge_the_backend_absorbs_is_not_a_recovery() -> None:
    mc = controller()
    absorbed = replace(CALM, arrival_rate=300.0, surge_ratio=3.5, retry_share=0.6)
    assert mc.evaluate(absorbed, T0 + 3) is None


def test_rates_below_minimum_are_not_judged() -> None:
    mc = controller()
    quiet = replace(CALM, arrival_rate=5.0, surge_ratio=10.0, retry_share=0.9)
    assert mc.evaluate(quiet, T0 + 3) is None


def test_retry_share_needs_an_answering_backend() -> None:
    mc = controller()
    dark = replace(CALM, arrival_rate=300.0, retry_share=0.9, health=health(ok=0))
    assert mc.evaluate(dark, T0 + 3) is None


def test_loaded_at_start_only_inside_the_startup_window() -> None:
    loaded = replace(CALM, saturated=True, loaded=True)
    mc = controller({"modes": {"startup_window": "10s"}})
    tr = mc.evaluate(loaded, T0 + 3)
    assert tr is not None and tr.reason == REASON_LOADED and tr.to_mode is Mode.RECOVERY
    late = controller({"modes": {"startup_window": "10s"}})
    assert late.evaluate(loaded, T0 + 11) is None
    pushback = replace(CALM, health=health(ok=50, pushback=10))
    assert controller({"modes": {"startup_window": "10s"}}).evaluate(pushback, T0 + 3)


def test_start_in_recovery_can_be_disabled() -> None:
    mc = controller({"modes": {"startup_window": "10s", "start_in_recovery_if_loaded": False}})
    assert mc.evaluate(replace(CALM, saturated=True, loaded=True), T0 + 3) is None


# --- OUTAGE ----------------------------------------------------------------------------------
def outage(extra: dict[str, Any] | None = None) -> ModeController:
    mc = controller(extra)
    mc.apply(Event.BROKEN, T0, REASON_ERRORS)
    return mc


def test_outage_holds_until_a_good_probe() -> None:
    mc = outage()
    dark = replace(CALM, health=health(ok=0, probe_fail_streak=3))
    assert mc.evaluate(dark, T0 + 10) is None
    good = replace(CALM, health=health(ok=0, probe_ok_streak=1), backlog=True)
    assert mc.evaluate(good, T0 + 1) is None  # dwell
    tr = mc.evaluate(good, T0 + 2)
    assert tr is not None and tr.to_mode is Mode.RECOVERY and tr.event is Event.HEALTHY_BACKLOG


def test_outage_without_backlog_returns_to_normal() -> None:
    mc = outage()
    good = replace(CALM, health=health(ok=0, probe_ok_streak=1))
    tr = mc.evaluate(good, T0 + 3)
    assert tr is not None and tr.to_mode is Mode.NORMAL


def test_outage_with_queue_goes_to_recovery() -> None:
    mc = outage()
    good = replace(CALM, health=health(ok=0, probe_ok_streak=1), queue_depth=1)
    tr = mc.evaluate(good, T0 + 3)
    assert tr is not None and tr.to_mode is Mode.RECOVERY


def test_in_outage_a_good_probe_outweighs_stale_canary_errors() -> None:
    mc = outage()
    mixed = replace(CALM, health=health(ok=0, broken=30, probe_ok_streak=0))
    assert mc.evaluate(mixed, T0 + 3) is None
    probed = replace(CALM, health=health(ok=0, broken=30, probe_ok_streak=1))
    tr = mc.evaluate(probed, T0 + 3)
    assert tr is not None and tr.to_mode is Mode.NORMAL


def test_outage_ends_on_good_canary_answers() -> None:
    mc = outage()
    canaries = replace(CALM, health=health(ok=1), backlog=True)
    tr = mc.evaluate(canaries, T0 + 3)
    assert tr is not None and tr.to_mode is Mode.RECOVERY


# --- RECOVERY --------------------------------------------------------------------------------
def recovery() -> ModeController:
    mc = controller()
    mc.apply(Event.OPERATOR_RECOVERY, T0, "operator")
    return mc


def test_recovery_ends_after_hold_when_calm() -> None:
    mc = recovery()
    t = T0
    for _ in range(60):  # 6 s of calm ticks: dwell 2 s, then hold 5 s from the first calm tick
        t += 0.1
        tr = mc.evaluate(CALM, t)
        if tr is not None:
            break
    assert tr is not None and tr.to_mode is Mode.NORMAL and tr.reason == REASON_DRAINED
    assert t >= T0 + 5.0


def test_recovery_does_not_end_while_limit_grows_or_queue_long() -> None:
    for snap in (replace(CALM, limit_growing=True), replace(CALM, queue_depth=9)):
        mc = recovery()
        for i in range(200):
            assert mc.evaluate(snap, T0 + 0.1 * i) is None
        assert mc.state is Mode.RECOVERY


def test_flapping_calm_signal_restarts_the_hold() -> None:
    mc = recovery()
    t = T0
    for i in range(300):  # 30 s, calm for 4 s then one busy tick, repeatedly
        t += 0.1
        snap = CALM if i % 40 else replace(CALM, queue_depth=100)
        assert mc.evaluate(snap, t) is None
    assert mc.state is Mode.RECOVERY


def test_recovery_to_outage_when_broken() -> None:
    mc = recovery()
    assert mc.evaluate(BROKEN, T0 + 1) is None
    tr = mc.evaluate(BROKEN, T0 + 2)
    assert tr is not None and tr.to_mode is Mode.OUTAGE


def test_flapping_health_is_damped_by_dwell() -> None:
    mc = controller()
    good = replace(CALM, health=health(probe_ok_streak=1), backlog=True)
    t = T0
    for i in range(200):  # 20 s of a signal that flips every tick
        t += 0.1
        mc.evaluate(BROKEN if i % 2 else good, t)
    # Without dwell this would be ~200 transitions; with 2 s dwell at most one per 2 s.
    assert 1 <= len(mc.history) <= 20 / 2 + 1


# --- SHIELD ----------------------------------------------------------------------------------
def test_shield_ttl_expires_into_recovery() -> None:
    mc = controller()
    mc.apply(Event.OPERATOR_SHIELD, T0, "operator", shield_ttl=30.0, shield_allow=frozenset({"r"}))
    assert mc.shield_allow == {"r"}
    assert mc.shield_remaining(T0 + 10) == 20.0
    assert mc.evaluate(BROKEN, T0 + 29) is None  # nothing automatic moves a shield
    tr = mc.evaluate(CALM, T0 + 30)
    assert tr is not None
    assert (tr.to_mode, tr.reason) == (Mode.RECOVERY, REASON_SHIELD_EXPIRED)
    assert mc.shield_allow == frozenset()
    assert mc.shield_remaining(T0 + 31) == 0.0


def test_shield_default_ttl_and_renewal() -> None:
    mc = controller({"modes": {"shield_default_ttl": "1m"}})
    mc.apply(Event.OPERATOR_SHIELD, T0, "operator")
    assert mc.shield_until == T0 + 60
    mc.apply(Event.OPERATOR_SHIELD, T0 + 50, "operator", shield_ttl=100.0)
    assert mc.shield_until == T0 + 150
    assert mc.state is Mode.SHIELD


def test_each_transition_s_effects_come_from_the_table() -> None:
    from proxy.control.mode_table import Effect, effects_of

    assert effects_of(Mode.NORMAL, Mode.OUTAGE, Event.BROKEN) == (Effect.FRESH_EVIDENCE,)
    assert effects_of(Mode.OUTAGE, Mode.RECOVERY, Event.HEALTHY_BACKLOG) == (
        Effect.FORGET_OUTAGE,
        Effect.COLD_START,
    )
    assert effects_of(Mode.OUTAGE, Mode.NORMAL, Event.HEALTHY) == (
        Effect.FORGET_OUTAGE,
        Effect.REBASE,
    )
    assert effects_of(Mode.NORMAL, Mode.RECOVERY, Event.SURGE) == (Effect.SLOW_START,)
    assert effects_of(Mode.NORMAL, Mode.RECOVERY, Event.LOADED_AT_START) == (Effect.COLD_START,)
    assert effects_of(Mode.SHIELD, Mode.RECOVERY, Event.SHIELD_EXPIRED) == (Effect.COLD_START,)
    assert effects_of(Mode.RECOVERY, Mode.NORMAL, Event.CALM) == (Effect.REBASE,)
    assert effects_of(Mode.SHIELD, Mode.SHIELD, Event.OPERATOR_SHIELD) == (Effect.ALLOW_LIST,)
    # Every legal transition has its effects decided by the table (no transition raises).
    for mode, moves in TRANSITIONS.items():
        for event, to in moves.items():
            assert isinstance(effects_of(mode, to, event), tuple)


# --- a fleet's mode hint ------------------------------------------------------------------------
def test_a_peer_s_recovery_hint_lowers_the_queue_threshold_never_to_nothing() -> None:
    # enter_queue_depth 64 by default, hint_share 0.25: 16 queued is enough with a hint.
    queued = replace(CALM, queue_depth=16)
    assert controller().evaluate(queued, T0 + 3) is None  # no hint: 16 is a short queue
    hinted = replace(queued, fleet_hint=Mode.RECOVERY)
    tr = controller().evaluate(hinted, T0 + 3)
    assert tr is not None and (tr.to_mode, tr.reason) == (Mode.RECOVERY, REASON_FLEET)
    assert tr.reason in TRANSITION_REASONS
    # The hint alone (nothing queued, nothing saturated) moves nothing.
    for hint in (Mode.RECOVERY, Mode.OUTAGE):
        assert controller().evaluate(replace(CALM, fleet_hint=hint), T0 + 3) is None
    assert controller().evaluate(replace(hinted, queue_depth=15), T0 + 3) is None


def test_a_peer_s_hint_lowers_the_surge_threshold_under_pressure() -> None:
    # enter_arrival_ratio 3: with a hint, 1 + 2 * 0.25 = 1.5 x the baseline under pressure.
    surge = replace(CALM, surge_ratio=1.6, saturated=True, arrival_rate=50.0)
    assert controller().evaluate(surge, T0 + 3) is None
    tr = controller().evaluate(replace(surge, fleet_hint=Mode.OUTAGE), T0 + 3)
    assert tr is not None and tr.reason == REASON_FLEET
    calm_surge = replace(surge, saturated=False, fleet_hint=Mode.RECOVERY)
    assert controller().evaluate(calm_surge, T0 + 3) is None  # not pressed: not a recovery


def test_a_peer_s_outage_hint_makes_fewer_broken_answers_enough() -> None:
    few = replace(CALM, health=health(ok=1, broken=4))  # 5 samples < outage_min_samples 10
    assert controller().evaluate(few, T0 + 3) is None
    tr = controller().evaluate(replace(few, fleet_hint=Mode.OUTAGE), T0 + 3)
    assert tr is not None and (tr.to_mode, tr.reason) == (Mode.OUTAGE, REASON_FLEET)
    # A RECOVERY hint says nothing of the backend being down.
    assert controller().evaluate(replace(few, fleet_hint=Mode.RECOVERY), T0 + 3) is None
    healthy = replace(CALM, health=health(ok=5), fleet_hint=Mode.OUTAGE)
    assert controller().evaluate(healthy, T0 + 3) is None
