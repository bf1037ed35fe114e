"""Which config changes a reload may apply: every rule in one place.

A reload swaps the config of a running process. What was bound or built once at start-up
cannot follow it: the fields config.RESTART_ONLY names (listeners, collector pacing, the
limiter's algorithm), the choice of gate, the caller index space, the upstream pool and its
TLS context, the fleet link. A reload that changes any of them is refused whole, with the
reason, and the old config stays in force. Pure: no process state.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import Config, restart_only_changes


def reload_refusal(old: Config, new: Config) -> str | None:
    """Why `new` cannot replace the running `old` without a restart (the first rule it
    breaks), or None when a reload may apply it."""
    for rule in RULES:
        why = rule(old, new)
        if why is not None:
            return why
    return None


def restart_only_fields(old: Config, new: Config) -> str | None:
    """The fields config.RESTART_ONLY names: used once, at start-up."""
    restart = restart_only_changes(old, new)
    return f"these fields need a restart: {', '.join(restart)}" if restart else None


def protection_switch(old: Config, new: Config) -> str | None:
    """`modes.protection: off` runs another gate (pass-through) from start-up; on and dry-run
    switch within the admission gate."""
    if (old.modes.protection == "off") != (new.modes.protection == "off"):
        return "switching modes.protection to or from 'off' needs a restart"
    return None


def caller_index_space(old: Config, new: Config) -> str | None:
    """Callers are indexed by position (known names, then fair buckets) in the gate's lanes,
    budgets and return slots, and labelled in the metrics, from start-up: their names and
    the number of buckets stay; their caps and weights may change."""
    if [c.name for c in old.callers.known] != [c.name for c in new.callers.known] or (
        old.callers.fair_buckets != new.callers.fair_buckets
    ):
        return "changing callers.known names or fair_buckets needs a restart"
    return None


def upstream_pool(old: Config, new: Config) -> str | None:
    """The upstream pool is opened once, for one URL, with one client implementation."""
    if old.upstream.url != new.upstream.url or old.upstream.client != new.upstream.client:
        return "changing upstream.url or upstream.client needs a restart"
    return None


def upstream_tls(old: Config, new: Config) -> str | None:
    """The TLS context is built once, at start-up, from `upstream.tls` and the files it names.
    Connections in the pool keep the context they were made with, so a new one could only
    take effect connection by connection: a restart applies it at once, to all."""
    if old.upstream.tls != new.upstream.tls:
        return "changing upstream.tls needs a restart"
    return None


def fleet_link(old: Config, new: Config) -> str | None:
    """The fleet link (`fleet`) is opened once, at start-up, for one Redis, one service and
    one instance id: peers know this sidecar by them, and a link moved mid-flight would leave
    bookings behind in the old place. A restart applies it."""
    if old.fleet != new.fleet:
        return "changing fleet needs a restart"
    return None


# In the order they are checked: the first broken rule is the reason given.
RULES: tuple[Callable[[Config, Config], str | None], ...] = (
    restart_only_fields,
    protection_switch,
    caller_index_space,
    upstream_pool,
    upstream_tls,
    fleet_link,
)
