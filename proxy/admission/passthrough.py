"""The gate with protection off: admits everything, still counts what passes.

Used for `modes.protection: off` (the harness's `passthrough` arm) so the request path is the
same code with and without protection.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..contracts import Deferred, Outcome, Probe, Reason, Refusal, Ticket
from ..ops.metrics import Metrics


class PassThroughGate:
    """Admits every request; tracks in-flight so `/status` and drain still work."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.in_flight = 0
        self.draining = False
        metrics.set_mode("NORMAL")

    def admit(self, ticket: Ticket) -> Refusal | Deferred | None:
        if self.draining:
            return Refusal(Reason.DRAINING, 503, 1000)
        self.in_flight += 1
        return None

    def release(self, ticket: Ticket, outcome: Outcome) -> None:
        self.in_flight -= 1
        if outcome.status is not None:
            self.metrics.upstream_answered(outcome.status)

    def upstream_refusal(self, ticket: Ticket, status: int) -> Refusal | None:
        return None  # without protection, every upstream answer is relayed

    def calm(self) -> bool:
        return not self.draining

    @property
    def mode_name(self) -> str:
        """Always `NORMAL`: without protection there are no modes."""
        return "NORMAL"

    def reconfigure(self, config: Config) -> None:
        self.config = config

    async def start(self, probe: Probe) -> None:
        return None

    async def drain(self) -> None:
        self.draining = True

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"mode": "NORMAL", "protection": "off", "in_flight": self.in_flight}

    def command(self, action: str, **params: Any) -> dict[str, Any]:
        raise ValueError("protection is off: modes cannot be changed (modes.protection: off)")
