"""What the access log costs per answer, in this process (printed, never checked).

    python -m loadtest.bench_accesslog [--answers 200000]

A storm is 20,000 refusals a second; past `logging.lines_per_s` each costs the budget's check
and a counter, and the few written cost a formatted JSON line. Measured here for: a refusal
whose line is left out (the storm's case), a refusal whose line is written (formatted by the
real `JsonFormatter` to /dev/null), and a forwarded success left out by the sample (the common
case), against an empty Python call for scale (a busy machine slows both). Each is also
given as a share of one core at 20,000 answers a second. About 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.config import LoggingConfig
from proxy.contracts import Outcome, Reason, Refusal, Ticket
from proxy.edge.accesslog import AccessLog, access_logger
from proxy.edge.forward import refusal_response
from proxy.logs import JsonFormatter

STORM_PER_S = 20_000


def _ticket() -> Ticket:
    return Ticket("orch", "orch", 0, 1, None, False, None, time.monotonic(), None, "r" * 32)


def _per_answer(n: int, call: Callable[[], None]) -> float:
    """Seconds per call, best of three runs of `n`."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def _nothing() -> None:
    return None


def _report(name: str, seconds: float) -> None:
    share = seconds * STORM_PER_S * 100.0
    print(f"{name:<44} {seconds * 1e6:7.2f} us   {share:5.1f} % of a core at 20,000/s")


async def _measure(handler: logging.StreamHandler[Any], answers: int) -> None:
    handler.setFormatter(JsonFormatter())
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    request = make_mocked_request("GET", "/metadata/identity/oauth2/token?api-version=1")
    refusal = refusal_response(Refusal(Reason.SHIELD, 503, 1000), "r" * 32)
    ticket = _ticket()
    success = web.Response(body=b"{}")
    outcome = Outcome(200, 0.01)

    _report("(scale: an empty Python call)", _per_answer(answers, _nothing))
    paced = LoggingConfig(lines_per_s=100, access_log_sample=0.0)
    left_out = AccessLog(lambda: paced, lambda: "SHIELD")
    left_out.answer(request, "10.0.0.1", refusal, ticket)  # take the burst
    for _ in range(200):
        left_out.answer(request, "10.0.0.1", refusal, ticket)
    _report(
        "refusal, line left out (the storm)",
        _per_answer(answers, lambda: left_out.answer(request, "10.0.0.1", refusal, ticket)),
    )

    unpaced = LoggingConfig(lines_per_s=100_000)
    written = AccessLog(lambda: unpaced, lambda: "SHIELD")
    _report(
        "refusal, line written (JSON to /dev/null)",
        _per_answer(answers // 20, lambda: written.answer(request, "10.0.0.1", refusal, ticket)),
    )
    _report(
        "forwarded success, not sampled",
        _per_answer(
            answers, lambda: left_out.answer(request, "10.0.0.1", success, ticket, outcome, 0.0)
        ),
    )
    left_out.lines.flush()
    access_logger.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=200_000)
    args = parser.parse_args(argv)
    with open(os.devnull, "w") as sink:
        # In a loop: the pacing's summary timer needs one.
        asyncio.run(_measure(logging.StreamHandler(sink), args.answers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
