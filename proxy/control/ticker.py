"""The gate's ticker: a round of background work every `recovery.batch_interval`, the
expiries due between rounds, and the active health probes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from ..config import Config
from ..contracts import Probe
from ..tuning import CONTROL, ControlTuning
from .modes import Mode

log = logging.getLogger("sluice.gate")


class Ticked(Protocol):
    """What the ticker drives (the gate)."""

    config: Config

    def tick(self, now: float) -> None:
        """One round of background work."""

    def next_expiry(self) -> float | None:
        """When the earliest waiter's wait runs out (None: nothing waits)."""

    def expire(self, now: float) -> None:
        """Answer the waiters whose wait runs out by the next round."""

    def on_probe(self, ok: bool, now: float) -> None:
        """Record a probe's result."""

    def evaluate_now(self, now: float) -> None:
        """Evaluate the mode out of turn."""

    @property
    def mode(self) -> Mode:
        """The mode now."""


class Ticker:
    """Runs `Ticked.tick` every `batch_interval` and probes the upstream on schedule. Its
    internal numbers are `tuning.ControlTuning`'s (why each value: docs/tuning.md)."""

    def __init__(
        self, target: Ticked, clock: Callable[[], float], tuning: ControlTuning = CONTROL
    ) -> None:
        self._target = target
        self._clock = clock
        self.tuning = tuning
        self.next_probe = clock()
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe: Probe | None = None
        self._evaluation_due = False

    @property
    def running(self) -> bool:
        """The ticker task exists (started and not stopped)."""
        return self._task is not None

    @property
    def probing(self) -> bool:
        """A probe is in flight."""
        return self._probe_task is not None

    def evaluate_soon(self) -> None:
        """Evaluate the mode as soon as the running request yields (once per loop
        iteration, however many ask): the request path never switches the mode itself.
        Without a running ticker, the next tick evaluates."""
        if self._task is None or self._evaluation_due:
            return
        self._evaluation_due = True
        asyncio.get_running_loop().call_soon(self._evaluate)

    def _evaluate(self) -> None:
        self._evaluation_due = False
        try:
            self._target.evaluate_now(self._clock())
        except Exception:  # as for a tick: the ticker must survive
            log.exception("gate evaluation failed")

    def probe_soon(self, now: float) -> None:
        """Probe within one `upstream.probe_interval` (a mode just changed)."""
        self.next_probe = min(self.next_probe, now + self._target.config.upstream.probe_interval)

    async def start(self, probe: Probe) -> None:
        """Start the ticker in the running loop."""
        self._probe = probe
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sluice-gate-ticker")

    async def stop(self) -> None:
        """Stop the ticker and any probe in flight."""
        for task in (self._task, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        self._probe_task = None

    async def _run(self) -> None:
        target = self._target
        while True:
            await self._sleep_expiring(target.config.recovery.batch_interval)
            now = self._clock()
            try:
                target.tick(now)
            except Exception:  # the ticker must survive a bug in one round
                log.exception("gate tick failed")
            if (
                self._probe is not None
                and self._probe_task is None
                and now + self.tuning.timer_slack >= self.next_probe  # timers fire early
            ):
                self._probe_task = asyncio.create_task(self.run_probe(self._probe, now))

    async def _sleep_expiring(self, interval: float) -> None:
        """Sleep one tick's `interval`, answering on the way the waiters whose wait runs out
        before it ends (a refusal frees no slot, so nothing else is due before the tick): a
        wait ends at the client's deadline less the margin, and a whole tick late is past it."""
        target = self._target
        min_step = self.tuning.expiry_step
        left = interval
        while left > 0:
            step = left
            due = target.next_expiry()
            if due is not None:
                step = min(left, max(due - self._clock(), min_step))
            await asyncio.sleep(step)
            left -= step
            due = target.next_expiry()
            if left > 0 and due is not None and due <= self._clock():
                try:
                    target.expire(self._clock())
                except Exception:  # as for a tick: the ticker must survive
                    log.exception("gate expiry failed")

    async def run_probe(self, probe: Probe, started: float) -> None:
        """One probe: its result recorded, the next one scheduled from this one's start."""
        up = self._target.config.upstream
        tuning = self.tuning
        deadline = tuning.probe_deadline_factor * up.probe_timeout + tuning.probe_deadline_extra
        try:
            try:
                async with asyncio.timeout(deadline):
                    ok = await probe()
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe that raises is a failed probe
                ok = False
            self._target.on_probe(ok, self._clock())
            slow = self._target.mode is Mode.NORMAL and ok
            # From the probe's start, not its answer: ticks come every batch_interval, and a
            # period counted from the answer missed the tick after it (half the probes).
            self.next_probe = started + (up.probe_interval_normal if slow else up.probe_interval)
        finally:
            self._probe_task = None
