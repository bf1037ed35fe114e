"""Client profiles of the load-test fleet: backoff arithmetic, Retry-After, headers; the
fleet's managed identities."""

from __future__ import annotations

import random
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from loadtest.identities import IDENTITIES_PER_CALLER, RESOURCES, TOKEN_PATH, make_identities
from loadtest.profiles import (
    PROFILE_NAMES,
    Failure,
    is_retryable_status,
    make_profile,
    parse_retry_after,
)


def test_naive_is_immediate_after_timeout_and_50ms_after_error() -> None:
    naive = make_profile("naive", naive_retries=3)
    rng = random.Random(1)
    assert naive.retries == 3
    assert naive.delay(0, Failure.TIMEOUT, None, rng) == 0.0
    assert naive.delay(2, Failure.STATUS, None, rng) == pytest.approx(0.05)
    assert naive.delay(1, Failure.CONNECT, None, rng) == pytest.approx(0.05)


def test_naive_ignores_retry_after() -> None:
    naive = make_profile("naive")
    assert naive.delay(0, Failure.STATUS, 7.0, random.Random(1)) == pytest.approx(0.05)


@pytest.mark.parametrize("n", range(5))
def test_sdk_backoff_is_0_8_times_2_to_the_n_within_20_percent(n: int) -> None:
    sdk = make_profile("sdk")
    rng = random.Random(n)
    base = 0.8 * 2**n
    delays = [sdk.delay(n, Failure.TIMEOUT, None, rng) for _ in range(2000)]
    assert min(delays) >= base * 0.8 - 1e-9
    assert max(delays) <= base * 1.2 + 1e-9
    # Jitter really spreads: both halves of the range are used.
    assert min(delays) < base * 0.9 < base * 1.1 < max(delays)


def test_sdk_has_five_retries_and_the_sequence_sums_to_about_25s() -> None:
    sdk = make_profile("sdk")
    assert sdk.retries == 5
    total = sum(0.8 * 2**n for n in range(sdk.retries))
    assert total == pytest.approx(24.8)


def test_sdk_honours_retry_after_plus_its_own_jitter() -> None:
    sdk = make_profile("sdk", retry_after_jitter=0.1)
    rng = random.Random(3)
    delays = [sdk.delay(4, Failure.STATUS, 2.5, rng) for _ in range(500)]
    assert all(2.5 <= d <= 2.6 for d in delays)
    assert max(delays) - min(delays) > 0.05


def test_sdk_noheader_sends_neither_attempt_nor_timeout_header() -> None:
    sdk = make_profile("sdk")
    quiet = make_profile("sdk-noheader")
    assert sdk.headers(2, 1.0) == [("x-retry-attempt", "2"), ("x-request-timeout-ms", "1000")]
    assert quiet.headers(2, 1.0) == []
    assert quiet.retries == sdk.retries and quiet.honour_retry_after


def test_hostile_never_waits_and_is_rate_capped() -> None:
    hostile = make_profile("hostile", hostile_retries=40)
    rng = random.Random(1)
    assert hostile.retries == 40
    assert hostile.rate_capped
    assert hostile.delay(0, Failure.STATUS, 30.0, rng) == 0.0
    assert hostile.delay(9, Failure.TIMEOUT, None, rng) == 0.0
    assert hostile.headers(5, 1.0) == []


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        make_profile("polite")
    assert set(PROFILE_NAMES) == {"naive", "sdk", "sdk-noheader", "hostile", "azure-sdk"}


def test_azure_sdk_is_the_real_client_with_its_own_retries_and_no_headers() -> None:
    real = make_profile("azure-sdk")
    assert real.real_sdk
    assert real.retries == 5  # azure-identity's IMDS retry_total
    assert real.headers(3, 1.0) == []  # neither attempt nor timeout header
    assert not any(make_profile(n).real_sdk for n in PROFILE_NAMES if n != "azure-sdk")


GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_each_caller_owns_a_few_fixed_identities_from_the_seed() -> None:
    callers = ["orchestrator-a", "orchestrator-b", "orchestrator-c"]
    ids = make_identities(1, callers)
    assert [len(own) for own in ids] == [IDENTITIES_PER_CALLER] * 3
    assert [{i.caller for i in own} for own in ids] == [{c} for c in callers]
    every = [i for own in ids for i in own]
    assert all(GUID.match(i.client_id) for i in every)
    assert len({i.client_id for i in every}) == len(every)  # no identity shared by two callers
    # Deterministic: the same seed gives the same identities, another seed others.
    assert make_identities(1, callers) == ids
    assert {i.client_id for own in make_identities(2, callers) for i in own}.isdisjoint(
        i.client_id for i in every
    )
    # A caller's identities do not depend on which other callers exist.
    assert make_identities(1, ["orchestrator-b"])[0] == ids[1]
    # Resources go round the list: each caller asks for each.
    assert [i.resource for i in ids[0]] == [RESOURCES[k % len(RESOURCES)] for k in range(4)]
    with pytest.raises(ValueError, match="at least one identity"):
        make_identities(1, callers, per_caller=0)


def test_an_identitys_request_is_the_same_every_time() -> None:
    ident = make_identities(7, ["orchestrator-a"], per_caller=2)[0][0]
    assert ident.path == make_identities(7, ["orchestrator-a"], per_caller=2)[0][0].path
    assert ident.path.startswith(TOKEN_PATH + "&")
    query = parse_qs(urlsplit(ident.path).query)
    assert query == {
        "api-version": ["2018-02-01"],
        "resource": [ident.resource],
        "client_id": [ident.client_id],
    }
    # What an Azure SDK asks for: the resource's `.default` scope.
    assert ident.scope == "https://management.azure.com/.default"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),  # ms preferred
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after-ms": "junk", "retry-after": "4"}, 4.0),
        ({"retry-after": "-1"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_retryable_statuses() -> None:
    assert all(is_retryable_status(s) for s in (408, 429, 500, 502, 503, 504))
    assert not any(is_retryable_status(s) for s in (200, 400, 401, 403, 404, 413))


def test_fleet_workflows_send_their_callers_identities_and_nothing_per_workflow() -> None:
    from loadtest.fleet_spec import FleetSpec
    from loadtest.fleet_workflow import KIND_BACKLOG, KIND_FRESH, FleetState, Workflow

    callers = [("orchestrator-a", 4), ("orchestrator-b", 1)]
    spec = FleetSpec(
        seed=3,
        regions=["east"],
        targets={"east": "http://127.0.0.1:1"},
        fresh_rate={"east": 10.0},
        callers=callers,
        profile="sdk-noheader",
        timeout=1.0,
        t_start=0.0,
        t_end=1.0,
    )
    state = FleetState(spec, make_profile("sdk-noheader"))

    class _User:
        rng = random.Random(5)

    flows = [
        Workflow(_User(), state, KIND_BACKLOG if i % 2 else KIND_FRESH, "east", 0.0)  # type: ignore[arg-type]
        for i in range(400)
    ]
    own = make_identities(3, [c for c, _ in callers])
    for wf in flows:
        assert wf.identity in own[wf.caller_idx]
        assert wf.path == wf.identity.path
    # At most 4 distinct URLs per caller, and they repeat: many workflows, few identities.
    assert len({wf.path for wf in flows}) == 2 * IDENTITIES_PER_CALLER
    # Only the request id tells two attempts apart; it is unique per workflow and attempt.
    ids = {dict(wf.headers(a, "east"))["x-request-id"] for wf in flows for a in range(3)}
    assert len(ids) == 3 * len(flows)
    assert dict(flows[0].attempt_headers(2)) == {
        "x-caller-id": flows[0].caller,
        "x-request-id": f"{flows[0].id:x}.2",
    }


def test_the_real_sdk_gets_more_fleet_processes_than_the_models() -> None:
    from loadtest.arm_schedule import fleet_processes

    assert fleet_processes(False, 2000, 240.0) == 1  # the lean clients: one process
    assert fleet_processes(True, 1000, 120.0) == 1  # reopen x1
    assert fleet_processes(True, 2000, 240.0) == 2  # reopen x2
    assert fleet_processes(True, 0, 400.0) == 3  # fresh traffic alone counts too
    assert fleet_processes(True, 2000, 240.0, configured=1) == 1  # the scenario decides


def test_shards_split_the_backlog_and_keep_ids_unique() -> None:
    from loadtest.fleet_spec import FleetSpec, merge_outputs

    base: dict[str, Any] = {
        "seed": 1,
        "regions": ["east"],
        "targets": {"east": "http://127.0.0.1:1"},
        "fresh_rate": {"east": 1.0},
        "callers": [("a", 1)],
        "profile": "azure-sdk",
        "timeout": 1.0,
        "t_start": 0.0,
        "t_end": 1.0,
        "backlog": 1001,
        "shards": 3,
    }
    specs = [FleetSpec(**base, shard=i) for i in range(3)]
    assert [s.backlog_share() for s in specs] == [334, 334, 333]
    assert len({s.seed_key for s in specs}) == 3
    assert FleetSpec(**(base | {"shards": 1})).seed_key == 1  # alone: the plain seed

    def out(shard: int, n: int, release: float) -> dict[str, Any]:
        ids = [shard + 3 * k for k in range(n)]
        return {
            "t_started": 10.0 + shard,
            "t_release": release,
            "t_release_written": release + 0.1,
            "release_prepared": n,
            "t_stopped": 40.0 + shard,
            "profile": "azure-sdk",
            "workflows": [[i, 1, 0, 0, release, release + 1, 1, 1] for i in ids],
            "attempts": [(i, 0, 0, release + 0.01 * i, release + 1, "200", None) for i in ids],
            "lag": [(release, 0.001 * shard)],
            "dropped_arrivals": shard,
            "csv": [f"s{shard}.csv"],
            "pid": 100 + shard,
        }

    merged = merge_outputs([out(0, 2, 16.2), out(1, 3, 16.1), out(2, 1, 16.3)])
    assert merged["t_release"] == 16.1 and merged["t_release_written"] == pytest.approx(16.4)
    assert merged["t_started"] == 10.0 and merged["t_stopped"] == 42.0
    assert [w[0] for w in merged["workflows"]] == [0, 1, 2, 3, 4, 7]
    assert len(merged["attempts"]) == 6 and len(merged["lag"]) == 3
    assert merged["dropped_arrivals"] == 3 and merged["shards"] == 3
    assert merged["release_prepared"] == 6  # every shard's held first attempts
    unprepared = [out(s, 1, 5.0) | {"release_prepared": None} for s in range(2)]
    assert merge_outputs(unprepared)["release_prepared"] is None  # nothing to judge
    single = out(0, 1, 5.0)
    assert merge_outputs([single]) is single
