"""Fixtures every test directory shares, and the end-of-run notice of the tests that could not
run because a system package is missing (`make test` must say so loudly: CI always has them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import BINARY, MISSING, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, stopped at teardown (skips where it is missing)."""
    if BINARY is None:
        pytest.skip(MISSING)
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List, loudly, every test skipped because a system package is missing."""
    missed = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if "MISSING PACKAGE" in reason:
            missed.append((report.nodeid, reason.removeprefix("Skipped: ")))
    if not missed:
        return
    tr = terminalreporter
    tr.section("TESTS NOT RUN: MISSING SYSTEM PACKAGES", sep="!", red=True, bold=True)
    for nodeid, reason in missed:
        tr.line(f"NOT RUN {nodeid}: {reason}", red=True, bold=True)
    tr.line(f"{len(missed)} test(s) could not run here; CI installs the packages (.ci/run).")
