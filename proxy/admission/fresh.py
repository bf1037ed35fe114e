"""The first tier's allowance: fresh arrivals up to the baseline's rate (a token bucket)."""

from __future__ import annotations


class FreshAllowance:
    """Tokens for fresh arrivals, accrued at the first tier's rate up to its burst."""

    __slots__ = ("at", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = 0.0
        self.at = now

    def refill(self, now: float, rate: float, burst: float) -> float:
        """Accrue up to `now` (between ticks too: a whole tick's worth arriving at once goes
        to whatever is read first); returns the tokens."""
        dt = now - self.at
        if dt > 0:
            self.at = now
            self.tokens = min(burst, self.tokens + rate * dt)
        return self.tokens
