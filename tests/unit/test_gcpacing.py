"""Garbage-collector pacing: full collections only when calm, never put off past the bound."""

from __future__ import annotations

import asyncio
import gc

import pytest

from proxy.config import ConfigError, load_config_data
from proxy.edge.gcpacing import (
    INCREMENTAL_GC,
    full_collection_due,
    give_back_full_collections,
    run_full_collections,
    take_over_full_collections,
)


def test_due_only_when_calm_and_the_interval_has_passed() -> None:
    assert full_collection_due(59.0, True, 60.0, 600.0) is None
    assert full_collection_due(60.0, True, 60.0, 600.0) == "calm"
    assert full_collection_due(300.0, False, 60.0, 600.0) is None  # a surge: put off


def test_due_when_put_off_as_long_as_allowed_even_in_a_surge() -> None:
    assert full_collection_due(600.0, False, 60.0, 600.0) == "forced"
    assert full_collection_due(600.0, True, 60.0, 600.0) == "forced"


async def test_collects_when_calm_and_not_in_a_surge() -> None:
    now = [0.0]
    calm = [False]
    collected: list[int] = []

    def collect(generation: int) -> int:
        collected.append(generation)
        return 0

    task = asyncio.create_task(
        run_full_collections(
            lambda: calm[0],
            lambda: (5.0, 50.0),
            check_every=0.001,
            clock=lambda: now[0],
            collect=collect,
        )
    )
    try:
        await asyncio.sleep(0.005)  # started at t = 0
        now[0] = 10.0  # past the interval, but RECOVERY
        await asyncio.sleep(0.02)
        assert collected == []
        calm[0] = True
        await asyncio.sleep(0.02)
        assert collected == [2]  # once, then the interval starts again
        calm[0] = False
        now[0] = 59.0  # 49 s after it: not yet forced
        await asyncio.sleep(0.02)
        assert collected == [2]
        now[0] = 61.0  # 51 s: forced, surge or not
        await asyncio.sleep(0.02)
        assert collected == [2, 2]
    finally:
        task.cancel()


def test_take_over_stops_automatic_full_collections_and_gives_them_back() -> None:
    before = gc.get_threshold()
    old = take_over_full_collections()
    try:
        assert old == before
        assert gc.get_freeze_count() > 0  # what start-up built is out of the collector's way
        if not INCREMENTAL_GC:
            assert gc.get_threshold()[:2] == before[:2]
            assert gc.get_threshold()[2] > 10**9
    finally:
        give_back_full_collections(old)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_interval_longer_than_max_deferral_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_data(
            {
                "upstream": {"url": "http://127.0.0.1:1"},
                "lifecycle": {"gc_full_interval": "10m", "gc_full_max_deferral": "1m"},
            }
        )
    assert "lifecycle" in str(err.value.errors[0])
