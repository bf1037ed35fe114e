"""When a request handled now may have arrived: before our own event loop got to it.

A reopening wave is thousands of requests on as many sockets. The loop reads them in a few
long iterations, and a request read in the last one has sat in its socket since before the one
before it: time that its client has counted against its timeout and a clock read in the
handler has not. Deadlines anchored at the handler's clock were then met by our clock and
missed by the client's (the traced run: docs/design-notes.md, "Arrival stamps").

`ArrivalClock` keeps a heartbeat on the loop: a timer every `period` that notes when it ran.
Timers run once per iteration, before its poll. A handler runs in the iteration after the poll
that read its request (the parser wakes it with `call_soon`), and the request arrived after
the poll before that one, which came after that iteration's timers: so after the third-last
heartbeat. Requests are stamped with that time (never later than now). On an idle loop it is
two or three heartbeats early; during a wave, as early as the loop was late.
"""

from __future__ import annotations

import asyncio
import time

from ..tuning import EDGE

DEFAULT_PERIOD = EDGE.arrival_period  # (`EdgeTuning.arrival_period`; docs/tuning.md)


class ArrivalClock:
    """The earliest time a request handled now can have arrived (monotonic seconds)."""

    __slots__ = ("_beats", "_handle", "_period")

    def __init__(self, period: float = DEFAULT_PERIOD) -> None:
        self._period = period
        now = time.monotonic()
        self._beats = [now, now, now]  # the last three heartbeats, oldest first
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start the heartbeat on the running loop."""
        if self._handle is None:
            self._beat()

    def stop(self) -> None:
        """Stop the heartbeat."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        beats = self._beats
        beats[0] = beats[1]
        beats[1] = beats[2]
        beats[2] = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(self._period, self._beat)

    def late(self, now: float) -> float:
        """How much longer than on an idle loop something handled at `now` may have waited
        for the loop (since the third-last heartbeat, less the three beats that span on an
        idle loop): 0 when the loop kept up, about its stall after one. An upstream answer
        read late by this much looks that much slower than the backend was."""
        return max(0.0, now - self.earliest(now) - 3 * self._period)

    def earliest(self, now: float) -> float:
        """When a request handled at `now` may have arrived (<= now). Without a running
        heartbeat (tests, before start) it is `now`."""
        if self._handle is None:
            return now
        oldest = self._beats[0]
        return oldest if oldest < now else now
