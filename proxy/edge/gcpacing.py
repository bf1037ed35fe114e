"""Garbage-collector pacing: full collections when the proxy is calm, never inside a surge.

CPython 3.11-3.13 run a full (generation 2) collection once enough objects have survived since
the last one, which is exactly what a reopening wave does: thousands of requests read at once.
With a few thousand open connections that collection walks every one of them while nothing is
read or answered (the measured pause: docs/design-notes.md, "Garbage-collector pacing"). So
Sluice freezes what start-up built (it lives for the whole process anyway), turns the automatic
full collections off, and runs them itself while the mode is calm (NORMAL, not draining), at
most `interval` apart, and never more than `max_deferral` after the last one, so memory stays
bounded through a long incident. Young collections are left as they are: they are short and
they are what frees most request garbage.

Python 3.14's incremental collector bounds its own pauses and ignores the third threshold;
there only the freeze applies.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable

from ..tuning import EDGE

log = logging.getLogger("sluice.gc")

# A generation-2 threshold no process reaches: automatic full collections never run.
_NEVER = 2**31 - 1
INCREMENTAL_GC = sys.version_info >= (3, 14)


def full_collection_due(
    since: float, calm: bool, interval: float, max_deferral: float
) -> str | None:
    """'calm' or 'forced' when a full collection should run now (`since` seconds after the
    last one), else None."""
    if since >= max_deferral:
        return "forced"
    if calm and since >= interval:
        return "calm"
    return None


def take_over_full_collections() -> tuple[int, int, int]:
    """Freeze the start-up heap and stop automatic full collections; returns the old thresholds
    (for `give_back_full_collections`)."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    if not INCREMENTAL_GC:
        gc.set_threshold(old[0], old[1], _NEVER)
    return old


def give_back_full_collections(old: tuple[int, int, int]) -> None:
    """Undo `take_over_full_collections` (at shutdown, and in tests)."""
    gc.set_threshold(*old)
    gc.unfreeze()


async def run_full_collections(
    calm: Callable[[], bool],
    settings: Callable[[], tuple[float, float]],
    *,
    check_every: float = EDGE.gc_check_every,
    clock: Callable[[], float] = time.monotonic,
    collect: Callable[[int], int] = gc.collect,
) -> None:
    """Run full collections as `full_collection_due` says, until cancelled. `settings` gives
    (interval, max_deferral), read at every check so a reload applies."""
    last = clock()
    while True:
        await asyncio.sleep(check_every)
        interval, max_deferral = settings()
        trigger = full_collection_due(clock() - last, calm(), interval, max_deferral)
        if trigger is None:
            continue
        started = time.perf_counter()
        found = collect(2)
        last = clock()
        took_ms = round((time.perf_counter() - started) * 1000.0, 1)
        extra = {"trigger": trigger, "took_ms": took_ms, "unreachable": found}
        if trigger == "forced":
            log.info("full garbage collection (deferred as long as allowed)", extra=extra)
        else:
            log.debug("full garbage collection", extra=extra)
