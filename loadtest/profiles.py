"""Client profiles: how an orchestrator's token call retries (pure arithmetic, no I/O).

- `naive`: R retries, immediately after a timeout, 50 ms (`naive_retry_delay`) after an error,
  ignores Retry-After.
- `sdk`: 5 retries, backoff 0.8·2ⁿ s ±20 %, honours `retry-after-ms` / `Retry-After` and adds its
  own jitter (up to `retry_after_jitter`, default 100 ms: one Retry-After slot).
- `sdk-noheader`: as `sdk`, but sends neither the attempt header nor the timeout header (like
  Azure's identity SDK), so a proxy must recognise its retries on its own.
- `hostile`: no delay at all, many retries, hides its attempt count, ignores Retry-After; the
  fleet caps its total rate so it cannot just burn the generator's CPU.
- `azure-sdk`: not a model but Microsoft's `azure-identity` itself (`loadtest.sdkclient`): each
  workflow a `ManagedIdentityCredential`, whose own retry policy decides (5 retries on 404, 410,
  429 and 5xx; the first at once, then 0.8·2ⁿ⁻¹ s without jitter; `Retry-After` honoured
  before `retry-after-ms`); no attempt or timeout header, a per-call `x-ms-client-request-id`.
  The fields below only describe it (`delay` is never asked); `real_sdk` tells the fleet.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from enum import Enum

PROFILE_NAMES: tuple[str, ...] = ("naive", "sdk", "sdk-noheader", "hostile", "azure-sdk")


class Failure(Enum):
    """How an attempt failed, as far as a retry policy cares."""

    TIMEOUT = "timeout"  # the per-attempt timeout fired
    CONNECT = "connect"  # refused / reset / broken connection
    STATUS = "status"  # a retryable status (429, 5xx)


@dataclass(frozen=True)
class Profile:
    """A retry policy plus the headers a client sends."""

    name: str
    retries: int
    send_attempt_header: bool = True
    send_timeout_header: bool = True
    honour_retry_after: bool = False
    backoff_base: float = 0.0  # s; delay before retry n (0-based) is base·2ⁿ ± spread
    backoff_spread: float = 0.0  # ± fraction
    after_timeout: float = 0.0  # fixed delay after a timeout (when there is no backoff)
    after_error: float = 0.0  # fixed delay after an error (when there is no backoff)
    retry_after_jitter: float = 0.1  # s added on top of an honoured Retry-After, U(0, this)
    rate_capped: bool = False  # the fleet paces this profile's attempts with a global cap
    real_sdk: bool = False  # the fleet runs azure-identity itself, which retries on its own

    def delay(
        self,
        retry_index: int,
        failure: Failure,
        retry_after_s: float | None,
        rng: random.Random,
    ) -> float:
        """Seconds to wait before retry number `retry_index` (0 = the first retry)."""
        if self.honour_retry_after and retry_after_s is not None and retry_after_s >= 0:
            return retry_after_s + rng.uniform(0.0, self.retry_after_jitter)
        if self.backoff_base > 0:
            base = self.backoff_base * (2.0**retry_index)
            return base * rng.uniform(1.0 - self.backoff_spread, 1.0 + self.backoff_spread)
        return self.after_timeout if failure is Failure.TIMEOUT else self.after_error

    def headers(self, attempt: int, timeout_s: float) -> list[tuple[str, str]]:
        """The attempt and timeout headers this profile sends for `attempt` (0 = first try)."""
        out: list[tuple[str, str]] = []
        if self.send_attempt_header:
            out.append(("x-retry-attempt", str(attempt)))
        if self.send_timeout_header:
            out.append(("x-request-timeout-ms", str(math.floor(timeout_s * 1000))))
        return out


def make_profile(
    name: str,
    naive_retries: int = 3,
    hostile_retries: int = 50,
    retry_after_jitter: float = 0.1,
    naive_retry_delay: float = 0.05,
) -> Profile:
    """The named profile, with the scenario's retry counts (and `naive`'s retry delay)."""
    if name == "naive":
        return Profile(
            "naive",
            retries=naive_retries,
            after_timeout=0.0,
            after_error=naive_retry_delay,
        )
    if name == "sdk":
        return Profile(
            "sdk",
            retries=5,
            honour_retry_after=True,
            backoff_base=0.8,
            backoff_spread=0.2,
            retry_after_jitter=retry_after_jitter,
        )
    if name == "sdk-noheader":
        sdk = make_profile("sdk", retry_after_jitter=retry_after_jitter)
        return replace(
            sdk, name="sdk-noheader", send_attempt_header=False, send_timeout_header=False
        )
    if name == "hostile":
        return Profile(
            "hostile",
            retries=hostile_retries,
            send_attempt_header=False,
            send_timeout_header=False,
            rate_capped=True,
        )
    if name == "azure-sdk":
        # azure.identity's IMDS pipeline settings (retry_total 5, backoff factor 0.8).
        return Profile(
            "azure-sdk",
            retries=5,
            send_attempt_header=False,
            send_timeout_header=False,
            honour_retry_after=True,
            backoff_base=0.8,
            retry_after_jitter=0.0,
            real_sdk=True,
        )
    raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}")


def parse_retry_after(headers: dict[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` (preferred) or `Retry-After` (whole seconds).

    HTTP-date forms of Retry-After are ignored (nothing here sends them).
    """
    ms = headers.get("retry-after-ms") or headers.get("x-ms-retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0 and math.isfinite(value):
            return value
    ra = headers.get("retry-after")
    if ra:
        try:
            value = float(ra)
        except ValueError:
            return None
        if value >= 0 and math.isfinite(value):
            return value
    return None


def is_retryable_status(status: int) -> bool:
    """Statuses a client retries: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500
