"""Per-caller retry budgets and caller caps as fleet totals (pure).

Each sidecar publishes its own counters in its peer record every tick: per caller, the retry
budget's deposits and withdrawals in its window and the requests in flight; and the global
budget's. Each sidecar sums its fresh peers' (`PeerTotals`, refreshed at every exchange) and
adds them to its own when it decides: never a Redis round trip on a request's path, at most a
tick (and for caps, the gate's cap refresh, a second) behind.

- `FleetRetryBudgets`: the balance is ratio x (own + peers' first tries) + the floor's reserve
  - (own + peers' retries): a caller's retries are bounded by its traffic over the whole fleet,
  not K times over. The floor (`floor_per_s`) becomes the fleet's floor.
- `FleetCaps`: a caller's cap is its configured cap less what it has in flight at the peers,
  but never below 1 while the configured cap is above 0 (a cap of 0 refuses for good and tells
  the client to come back late; a busy peer must not make that happen here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..admission.budgets import LocalRetryBudgets
from ..admission.callers import Caller, ConfiguredCaps
from ..config import Config, RetryBudgetConfig
from ..tuning import ADMISSION, AdmissionTuning
from .peers import Peer


def own_counters(budgets: LocalRetryBudgets | None, callers: Sequence[Caller]) -> dict[str, Any]:
    """This sidecar's counters for its peer record (only callers with something to say)."""
    doc: dict[str, Any] = {"f": {c.name: c.in_flight for c in callers if c.in_flight > 0}}
    if budgets is not None:
        per, (gd, gw) = budgets.window_sums()
        doc["d"] = {callers[i].name: d for i, (d, _) in enumerate(per) if d and i < len(callers)}
        doc["w"] = {callers[i].name: w for i, (_, w) in enumerate(per) if w and i < len(callers)}
        doc["g"] = [gd, gw]
    return doc


class PeerTotals:
    """The fresh peers' counters, summed per caller index."""

    def __init__(self, names: Sequence[str]) -> None:
        self.index = {n: i for i, n in enumerate(names)}
        n = len(names)
        self.deposits = [0.0] * n
        self.withdrawals = [0.0] * n
        self.global_sums = (0.0, 0.0)
        self.in_flight = [0] * n

    def update(self, peers: Sequence[Peer]) -> None:
        """Sum the counters of `peers` (their last records)."""
        n = len(self.index)
        dep, wd, fl = [0.0] * n, [0.0] * n, [0] * n
        gd = gw = 0.0
        for p in peers:
            c = p.counters
            _add(dep, self.index, c.get("d"))
            _add(wd, self.index, c.get("w"))
            _add(fl, self.index, c.get("f"))
            g = c.get("g")
            if isinstance(g, list) and len(g) == 2 and all(isinstance(x, int | float) for x in g):
                gd += g[0]
                gw += g[1]
        self.deposits, self.withdrawals, self.in_flight = dep, wd, fl
        self.global_sums = (gd, gw)


def _add(into: list[Any], index: dict[str, int], raw: Any) -> None:
    if not isinstance(raw, dict):
        return
    for name, value in raw.items():
        i = index.get(name)
        if i is not None and isinstance(value, int | float) and value > 0:
            into[i] += value


class FleetRetryBudgets(LocalRetryBudgets):
    """Retry budgets whose balance counts the peers' first tries and retries too."""

    def __init__(
        self,
        config: RetryBudgetConfig,
        callers: int,
        now: float,
        totals: PeerTotals,
        tuning: AdmissionTuning = ADMISSION,
    ) -> None:
        super().__init__(config, callers, now, tuning)
        self.totals = totals

    def peer_sums(self, caller: int | None) -> tuple[float, float]:
        """The peers' deposits and withdrawals for `caller` (None: the global budget)."""
        t = self.totals
        if caller is None:
            return t.global_sums
        if caller >= len(t.deposits):
            return (0.0, 0.0)
        return (t.deposits[caller], t.withdrawals[caller])


class FleetCaps:
    """Caller caps as fleet totals: the configured cap less the caller's in-flight at peers."""

    def __init__(self, config: Callable[[], Config], totals: PeerTotals) -> None:
        self.config = config  # the config in force (reloads change caps)
        self.totals = totals

    def caps(self, names: Sequence[str]) -> list[int | None]:
        """Caps in caller-index order."""
        base = ConfiguredCaps(self.config()).caps(names)
        busy = self.totals.in_flight
        out: list[int | None] = []
        for i, cap in enumerate(base):
            if cap is None or cap == 0 or i >= len(busy):
                out.append(cap)
            else:
                out.append(max(1, cap - busy[i]))
        return out
