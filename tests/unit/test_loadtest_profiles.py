"""Client profiles of the load-test fleet: backoff arithmetic, Retry-After, headers."""

from __future__ import annotations

import random

import pytest

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
    assert set(PROFILE_NAMES) == {"naive", "sdk", "sdk-noheader", "hostile"}


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
