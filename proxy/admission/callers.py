"""Per-caller accounting (configured callers, then the hashed fair buckets) and their caps."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from ..config import Config
from .pacing import Booking

NO_CAP = 1 << 62


class CallerCaps(Protocol):
    """Where per-caller concurrency caps come from (a fleet-wide store can share them)."""

    def caps(self, names: Sequence[str]) -> list[int | None]:
        """The cap for each caller name (None = no cap, 0 = refused)."""


class ConfiguredCaps:
    """In-process default: `callers.known[].cap`, and `callers.default_cap` for buckets."""

    def __init__(self, config: Config) -> None:
        self._known = {c.name: c.cap for c in config.callers.known}
        self._default = config.callers.default_cap

    def caps(self, names: Sequence[str]) -> list[int | None]:
        """Caps in caller-index order."""
        return [self._known.get(n, self._default) for n in names]


class Caller:
    """One caller's accounting (index space: configured callers, then fair buckets)."""

    __slots__ = (
        "allowed",
        "bookings",
        "cap",
        "in_flight",
        "index",
        "label",
        "name",
        "queued",
        "weight",
    )

    def __init__(self, index: int, name: str, label: str, bookings: deque[Booking]) -> None:
        self.index = index
        self.name = name
        self.label = label  # metric label: configured name or "other"
        self.cap = NO_CAP
        self.weight = 1
        self.in_flight = 0
        self.queued = 0
        self.allowed = False  # on the SHIELD allow-list
        self.bookings = bookings  # the pacer's deque for this caller (truthy = slots booked)


def build_callers(
    config: Config,
    names: Sequence[str],
    old: Sequence[Caller],
    bookings: Sequence[deque[Booking]],
    caps: CallerCaps,
) -> list[Caller]:
    """The caller table for `names`, keeping the accounting of callers that stay."""
    known = {c.name: c for c in config.callers.known}
    previous = {c.name: c for c in old}
    callers = []
    for i, name in enumerate(names):
        c = previous.get(name)
        if c is None:
            label = name if name in known else "other"
            c = Caller(i, name, label, bookings[i])
        c.index = i
        c.bookings = bookings[i]
        c.weight = known[name].weight if name in known else 1
        callers.append(c)
    apply_caps(callers, caps.caps(names))
    return callers


def apply_caps(callers: Sequence[Caller], caps: Sequence[int | None]) -> None:
    """Set each caller's cap (None = uncapped)."""
    for c, cap in zip(callers, caps, strict=True):
        c.cap = NO_CAP if cap is None else cap


class CallerTable:
    """A gate's callers for its whole life: the configured ones, then the fair buckets.

    The names are fixed (a reload that changes them is refused: lanes, budgets and slots are
    indexed by them); caps and weights follow the config and the caps source.
    """

    def __init__(
        self,
        config: Config,
        names: Sequence[str],
        bookings: Sequence[deque[Booking]],
        caps: CallerCaps | None = None,
    ) -> None:
        self.names = list(names)
        self._configured = caps is None  # caps from the config (rebuilt on reload)
        self._caps: CallerCaps = caps or ConfiguredCaps(config)
        self.all = build_callers(config, self.names, [], bookings, self._caps)
        self.n_known = len(config.callers.known)

    def resolve(self, index: int) -> Caller:
        """The caller at `index`; an index past the table folds into a bucket."""
        try:
            return self.all[index]
        except IndexError:
            buckets = max(1, len(self.all) - self.n_known)
            return self.all[self.n_known + index % buckets]

    def reconfigure(self, config: Config, bookings: Sequence[deque[Booking]]) -> None:
        """Follow a new config's caps and weights; raise ValueError if its names differ."""
        names = [c.name for c in config.callers.known] + [
            f"bucket-{i}" for i in range(config.callers.fair_buckets)
        ]
        if names != self.names:
            raise ValueError("changing callers.known names or fair_buckets needs a restart")
        if self._configured:
            self._caps = ConfiguredCaps(config)
        self.all = build_callers(config, self.names, self.all, bookings, self._caps)

    def use_caps(self, caps: CallerCaps) -> None:
        """Take caps from `caps` from now on (a fleet's totals); it follows reloads itself."""
        self._configured = False
        self._caps = caps
        apply_caps(self.all, caps.caps(self.names))

    def refresh_caps(self) -> None:
        """Read the caps again (a fleet-wide source may have moved them)."""
        apply_caps(self.all, self._caps.caps(self.names))

    def allow_only(self, allow: frozenset[str]) -> None:
        """SHIELD's allow-list: only these callers are `allowed` (empty: none)."""
        for c in self.all:
            c.allowed = c.name in allow
