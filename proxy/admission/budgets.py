"""Retry budgets per caller and one global (pure: time is passed in).

Finagle / Linkerd style: every first try deposits `ratio` of a retry; deposits expire after
`window`; a reserve of `floor_per_s` * `window` retries is always there so a quiet caller can
still retry at all. An unsolicited retry withdraws one from its caller's budget *and* from the
global one (many callers hashed into buckets must not add up to a storm).

What is *not* here, because it is the gate's business: solicited returns (a caller back in the
slot we booked for it) are never charged, and a retry over budget may still use capacity that
nothing else wants (work-conserving), it just never queues.

`RetryBudgets` is the interface the gate uses; `LocalRetryBudgets` is the in-process default,
and a fleet's `fleet.totals.FleetRetryBudgets` adds its peers' deposits and withdrawals (the
budget is then the fleet's total). A window is kept in `budget_buckets` time
buckets (`tuning.AdmissionTuning`; docs/tuning.md).
"""

from __future__ import annotations

from typing import Protocol

from ..config import RetryBudgetConfig
from ..tuning import ADMISSION, AdmissionTuning


class RetryBudgets(Protocol):
    """What the gate needs from a retry budget, whatever stores it."""

    def deposit(self, caller: int) -> None:
        """A first try from `caller` (hot path: must be O(1) and cheap)."""

    def try_withdraw(self, caller: int, now: float) -> bool:
        """Charge one unsolicited retry to `caller` and to the global budget, if both allow."""

    def remaining(self, caller: int, now: float) -> float:
        """Retries `caller` may still make now (may be negative after a reconfigure)."""

    def remaining_global(self, now: float) -> float:
        """Retries all callers together may still make now."""

    def roll(self, now: float) -> None:
        """Age every budget to `now` (the gate's ticker calls this)."""

    def reconfigure(self, config: RetryBudgetConfig, callers: int, now: float) -> None:
        """Apply new ratios and floors (history kept when the window is unchanged)."""


class _Ring:
    """Deposits and withdrawals in `n` time buckets; sums kept up to date."""

    __slots__ = ("dep", "dep_sum", "epoch", "n", "pending", "wd", "wd_sum")

    def __init__(self, epoch: int, n: int) -> None:
        self.n = n
        self.dep = [0] * n
        self.wd = [0] * n
        self.dep_sum = 0
        self.wd_sum = 0
        self.pending = 0  # deposits since the last advance (placed by the next one)
        self.epoch = epoch

    def advance(self, epoch: int) -> None:
        """Place pending deposits in the bucket they arrived in (the ring's current one: the
        ticker advances every ring each bucket), then expire buckets older than the window."""
        n = self.n
        if self.pending:
            self.dep[self.epoch % n] += self.pending
            self.dep_sum += self.pending
            self.pending = 0
        steps = epoch - self.epoch
        if steps > 0:
            if steps >= n:
                self.dep = [0] * n
                self.wd = [0] * n
                self.dep_sum = 0
                self.wd_sum = 0
            else:
                for e in range(self.epoch + 1, epoch + 1):
                    i = e % n
                    self.dep_sum -= self.dep[i]
                    self.wd_sum -= self.wd[i]
                    self.dep[i] = 0
                    self.wd[i] = 0
            self.epoch = epoch

    def withdraw(self) -> None:
        self.wd[self.epoch % self.n] += 1
        self.wd_sum += 1


class LocalRetryBudgets:
    """In-process retry budgets: one ring per caller index plus a global ring."""

    def __init__(
        self,
        config: RetryBudgetConfig,
        callers: int,
        now: float,
        tuning: AdmissionTuning = ADMISSION,
    ) -> None:
        self._n = tuning.budget_buckets
        self._configure(config)
        epoch = self._epoch(now)
        self._rings = [_Ring(epoch, self._n) for _ in range(callers)]
        self._global = _Ring(epoch, self._n)
        self._last_epoch = epoch

    def _configure(self, config: RetryBudgetConfig) -> None:
        self.config = config
        self._width = config.window / self._n
        self._reserve = config.floor_per_s * config.window
        self._g_reserve = config.global_floor_per_s * config.window

    def _epoch(self, now: float) -> int:
        return int(now // self._width)

    def deposit(self, caller: int) -> None:
        """A first try: counted now, placed in its time bucket at the next roll."""
        self._rings[caller].pending += 1
        self._global.pending += 1

    def _balance(
        self, ring: _Ring, ratio: float, reserve: float, peers: tuple[float, float] = (0.0, 0.0)
    ) -> float:
        return ratio * (ring.dep_sum + peers[0]) + reserve - ring.wd_sum - peers[1]

    def peer_sums(self, caller: int | None) -> tuple[float, float]:
        """Deposits and withdrawals other processes add to `caller`'s budget (None: the
        global one) in the window: none here (a fleet's budgets add their peers')."""
        return (0.0, 0.0)

    def window_sums(self) -> tuple[list[tuple[int, int]], tuple[int, int]]:
        """This process's own (deposits, withdrawals) in the window, per caller and global
        (what a fleet's sidecar publishes to its peers)."""
        per = [(r.dep_sum + r.pending, r.wd_sum) for r in self._rings]
        g = self._global
        return per, (g.dep_sum + g.pending, g.wd_sum)

    def try_withdraw(self, caller: int, now: float) -> bool:
        """Charge one retry if the caller's and the global budget both have one left."""
        epoch = self._epoch(now)
        ring = self._rings[caller]
        ring.advance(epoch)
        self._global.advance(epoch)
        cfg = self.config
        if self._balance(ring, cfg.ratio, self._reserve, self.peer_sums(caller)) < 1.0:
            return False
        g_peers = self.peer_sums(None)
        if self._balance(self._global, cfg.global_ratio, self._g_reserve, g_peers) < 1.0:
            return False
        ring.withdraw()
        self._global.withdraw()
        return True

    def remaining(self, caller: int, now: float) -> float:
        """Retries the caller may still make now."""
        ring = self._rings[caller]
        ring.advance(self._epoch(now))
        return self._balance(ring, self.config.ratio, self._reserve, self.peer_sums(caller))

    def remaining_global(self, now: float) -> float:
        """Retries all callers together may still make now."""
        self._global.advance(self._epoch(now))
        cfg = self.config
        return self._balance(self._global, cfg.global_ratio, self._g_reserve, self.peer_sums(None))

    def roll(self, now: float) -> None:
        """Age every ring once per bucket, so idle callers' deposits expire on time."""
        epoch = self._epoch(now)
        if epoch == self._last_epoch:
            return
        self._last_epoch = epoch
        for ring in self._rings:
            ring.advance(epoch)
        self._global.advance(epoch)

    def reconfigure(self, config: RetryBudgetConfig, callers: int, now: float) -> None:
        """New ratios and floors; a new window restarts the history (deposits re-earned)."""
        same_window = config.window == self.config.window
        self._configure(config)
        epoch = self._epoch(now)
        if not same_window:
            self._rings = [_Ring(epoch, self._n) for _ in range(callers)]
            self._global = _Ring(epoch, self._n)
        elif callers > len(self._rings):
            self._rings.extend(_Ring(epoch, self._n) for _ in range(callers - len(self._rings)))
        self._last_epoch = epoch
