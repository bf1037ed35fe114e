"""Our own event loop's lateness, read off the ticker: how late each tick ran."""

from __future__ import annotations


class LoopLag:
    """The last tick's lateness, the worst stall lately, and whether we are saturated.

    A request read at the end of a stall waited that long in its socket before we saw it,
    so its client's clock is that far ahead of the `arrived` we measure: waits are judged
    `stall` early. Busy (saturated, not stalled once by a collection or a wave being read):
    two ticks in a row ran `busy_lag` late.
    """

    __slots__ = ("busy", "lag", "stall", "stall_at")

    def __init__(self, now: float) -> None:
        self.lag = 0.0
        self.stall = 0.0
        self.stall_at = now
        self.busy = False

    def observe(self, now: float, lag: float, busy_lag: float, memory: float) -> None:
        """One tick that ran `lag` late; a stall is remembered for `memory` seconds."""
        self.busy = 0 < busy_lag <= min(lag, self.lag)
        self.lag = lag
        if lag >= self.stall or now - self.stall_at > memory:
            self.stall, self.stall_at = lag, now
