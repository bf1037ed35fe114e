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
    link = FleetLink(config, exchange, journal, lambda: sluice.gate.mode_name)
    link.after = FleetMetricsSync(sluice.metrics.add_fleet(), link, pacer)
    return link


def status(link: FleetLink, sluice: Sluice, now: float) -> dict[str, Any]:
    """The fleet's part of /status."""
    gate = sluice.gate
    return fleet_status(link, gate.pacer if isinstance(gate, AdmissionGate) else None, now)
