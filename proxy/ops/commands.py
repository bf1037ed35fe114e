"""Operator commands on the gate (`POST /mode`): recovery, shield, normal, dry-run.

Parameters are validated here, with errors that say what to send; the gate carries out the
transition through its public `apply_transition`, `set_dry_run` and its waiting room's `pump`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..config import parse_duration
from ..control.mode_table import REASON_OPERATOR, Event, IllegalTransition, Mode, Transition

if TYPE_CHECKING:
    from ..admission.gate import AdmissionGate


def run_command(gate: AdmissionGate, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Carry out `action` with `params`; raise ValueError with a clear message if invalid."""
    now = gate.now()
    modes = gate.modes
    transition: Transition | None = None
    if action == "recovery":
        _no_params(action, params)
        if modes.state is not Mode.RECOVERY:
            transition = modes.apply(
                Event.OPERATOR_RECOVERY, now, REASON_OPERATOR, "operator command"
            )
    elif action == "shield":
        ttl, allow = shield_params(gate, params)
        detail = f"ttl {ttl:g}s, allow {sorted(allow)}"
        transition = modes.apply(Event.OPERATOR_SHIELD, now, REASON_OPERATOR, detail, ttl, allow)
    elif action == "normal":
        _no_params(action, params)
        transition = _to_normal(gate, now)
    elif action == "dry-run":
        gate.set_dry_run(_dry_run_param(params), now)
    else:
        raise ValueError(
            f"unknown mode command {action!r}: use recovery, shield, normal or dry-run"
        )
    if transition is not None:
        gate.apply_transition(transition, now)
        gate.room.pump(now)
    return {
        "mode": modes.state.value,
        "changed": transition is not None,
        "transition": transition.to_dict(now) if transition is not None else None,
        "dry_run": gate.dry_run,
    }


def _to_normal(gate: AdmissionGate, now: float) -> Transition | None:
    modes = gate.modes
    if modes.state is Mode.SHIELD:
        raise ValueError("SHIELD exits only to RECOVERY: send 'recovery' first, then 'normal'")
    if modes.state is Mode.NORMAL:
        return None
    try:
        return modes.apply(Event.OPERATOR_NORMAL, now, REASON_OPERATOR, "operator command")
    except IllegalTransition as exc:  # pragma: no cover - table guards it
        raise ValueError(str(exc)) from None


def _dry_run_param(params: dict[str, Any]) -> bool:
    extra = set(params) - {"on"}
    if extra:
        raise ValueError(f"dry-run takes only 'on' (unexpected: {', '.join(sorted(extra))})")
    on = params.get("on")
    if not isinstance(on, bool):
        raise ValueError("dry-run needs 'on': true or false")
    return on


def shield_params(gate: AdmissionGate, params: dict[str, Any]) -> tuple[float, frozenset[str]]:
    """SHIELD's `ttl` (seconds or a duration, within `modes.shield_max_ttl`) and `allow`
    (configured caller names)."""
    extra = set(params) - {"ttl", "allow"}
    if extra:
        raise ValueError(f"shield takes 'ttl' and 'allow' (unexpected: {', '.join(sorted(extra))})")
    m = gate.config.modes
    ttl = _ttl(params.get("ttl"), m.shield_default_ttl)
    if not math.isfinite(ttl) or ttl <= 0 or ttl > m.shield_max_ttl:
        raise ValueError(f"shield 'ttl' must be > 0 and <= {m.shield_max_ttl:g}s")
    raw_allow = params.get("allow", [])
    if not isinstance(raw_allow, list) or not all(isinstance(a, str) for a in raw_allow):
        raise ValueError("shield 'allow' must be a list of caller names")
    known = {c.name for c in gate.config.callers.known}
    unknown = sorted(set(raw_allow) - known)
    if unknown:
        raise ValueError(
            f"shield 'allow' names unknown callers: {', '.join(unknown)} "
            "(only callers.known can be allow-listed)"
        )
    return ttl, frozenset(raw_allow)


def _ttl(raw: object, default: float) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool):
        raise ValueError("shield 'ttl' must be seconds or a duration like '10m'")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        return parse_duration(raw)
    raise ValueError("shield 'ttl' must be seconds or a duration like '10m'")


def _no_params(action: str, params: dict[str, Any]) -> None:
    if params:
        raise ValueError(f"{action} takes no parameters (got: {', '.join(sorted(params))})")
