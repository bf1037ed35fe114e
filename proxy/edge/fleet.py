"""Joining a fleet (`fleet.redis`): the journal hooked into the pacer and the retry memory,
the exchange over them, the link that runs it, and its metrics. Imported only when a fleet is
configured, so a standalone Sluice never loads the Redis client."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from ..admission.gate import AdmissionGate
from ..fleet.exchange import Exchange
from ..fleet.journal import Journal
from ..fleet.link import FleetLink
from ..fleet.totals import FleetCaps, FleetRetryBudgets, PeerTotals, own_counters
from ..ops.fleet import FleetMetricsSync, fleet_status

if TYPE_CHECKING:
    from .app import Sluice


def default_instance() -> str:
    """This sidecar's id when `fleet.instance` is not set: hostname:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def join_fleet(sluice: Sluice) -> FleetLink:
    """The fleet link for `sluice` (not started): what its pacer books and redeems and what
    its classifier sees is journalled for the peers, and theirs merged back."""
    config = sluice.snapshot.config
    gate = sluice.gate
    admission = gate if isinstance(gate, AdmissionGate) else None
    journal = Journal()
    pacer = admission.pacer if admission is not None else None
    if pacer is not None:
        pacer.journal = journal
    sluice.snapshot.classifier.memory.set_journal(journal)

    def on_hint(mode: str | None, until: float) -> None:
        if admission is not None:
            admission.control.note_fleet_hint(mode, until)

    exchange = Exchange(
        config.fleet.instance or default_instance(),
        sluice.snapshot.classifier.caller_names(),
        pacer,
        lambda: sluice.snapshot.classifier.memory,
        on_hint,
    )
    if admission is not None:
        share_totals(admission, exchange)
    link = FleetLink(config, exchange, journal, lambda: sluice.gate.mode_name)
    link.after = FleetMetricsSync(sluice.metrics.add_fleet(), link, pacer)
    return link


def share_totals(gate: AdmissionGate, exchange: Exchange) -> None:
    """Retry budgets and caller caps as fleet totals (`fleet.totals`): the gate's in-process
    budgets are replaced (before any request) and its caps read the peers' in-flight."""
    table = gate.caller_table
    totals = PeerTotals(table.names)
    budgets = FleetRetryBudgets(
        gate.config.retry_budget, len(table.names), gate.now(), totals, gate.tuning
    )
    gate.budgets = budgets
    table.use_caps(FleetCaps(lambda: gate.config, totals))
    exchange.totals = totals
    exchange.counters = lambda: own_counters(budgets, table.all)


def status(link: FleetLink, sluice: Sluice, now: float) -> dict[str, Any]:
    """The fleet's part of /status."""
    gate = sluice.gate
    return fleet_status(link, gate.pacer if isinstance(gate, AdmissionGate) else None, now)
