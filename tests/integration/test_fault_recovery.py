"""Faults under a storm, with real processes on loopback: a Sluice subprocess in front of the
simulated backend (`python -m loadtest.backend`) as its own process, and a steady, bounded
open-loop load from this test's event loop.

- The backend is SIGKILLed mid-storm and restarted on the same port: Sluice goes to OUTAGE,
  answers every request explicitly meanwhile (a reason from the closed table, with the status
  the table gives it and a Retry-After), comes back through RECOVERY to NORMAL, every request
  gets an answer (none hangs), and in-flight and queue return to 0.
- The config is rewritten and SIGHUP'd while the gate queues: no request is dropped (each gets
  a 200 or a table answer, never a connection error or a client timeout), and the new limits
  are in force (a caller cap of 0 refuses that caller with `caller-cap`; /status shows the new
  generation, limiter bounds and queue size).

Every request carries `x-request-timeout-ms`; the client gives each one that deadline plus a
generous grace before it calls it a hang (a guard, not a measure). No timing is asserted:
phases (before the kill, backend dead, restarted; before and after the reload) are marks in the
storm's sequence of events, not clock readings, and every wait is for a state reached. How
late answers come against their deadline is printed by `python -m loadtest.bench_timing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time  # the backend process's start-up poll only
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.contracts import REASONS
from tests.support import (
    ROOT,
    SluiceProcess,
    free_port,
    get_json,
    merge,
    process_config,
    wait_for,
)

DEADLINE_MS = 1000  # sent as x-request-timeout-ms
GRACE = 5.0  # seconds past the deadline before the client calls a request hung (a guard)


def port_outside_ephemeral_range() -> int:
    """A free loopback port below the kernel's ephemeral range. While the backend is down,
    a port from that range could become the source port of some outgoing connection (even of
    Sluice's own connect to it: a TCP self-connect), and the restart could not bind it."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class BackendProcess:
    """`loadtest.backend` as a subprocess on fixed ports, so it can be killed and restarted
    where Sluice expects it."""

    def __init__(self, tmp: Path, workers: int, service_time: float) -> None:
        self.port = port_outside_ephemeral_range()
        self.admin_port = port_outside_ephemeral_range()
        self.workers = workers
        self.service_time = service_time
        self.log_path = tmp / "backend.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.starts += 1
        args = [
            sys.executable,
            "-m",
            "loadtest.backend",
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            "--name",
            f"backend-{self.starts}",
            "--workers",
            str(self.workers),
            "--service-time",
            str(self.service_time),
            "--max-lifetime",
            "60",  # never outlives a stuck test for long
            "--parent-pid",
            str(os.getpid()),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited early:\n{self.log()}")
            # The admin listener is bound after the main one: both are up once it answers.
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.admin_port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError(f"backend did not start:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye, its connections die with it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Answer:
    """One request of the storm, as the client saw it."""

    caller: str
    sent: int  # the storm's phase when it was sent (see `Storm.mark`)
    done: int | None = None  # ...and when its answer (or failure) came; None: not yet
    status: int | None = None  # None: no HTTP answer at all
    reason: str | None = None
    retry_after: str | None = None
    error: str | None = None  # client-side failure: connection error or hang


@dataclass
class Storm:
    """A steady open-loop load: `rate` requests per second, spread over `callers`, each with
    a deadline header, until stopped (and never more than `max_requests`)."""

    session: aiohttp.ClientSession
    base: str
    rate: float
    callers: tuple[str, ...]
    max_requests: int
    answers: list[Answer] = field(default_factory=list)
    phase: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    def mark(self) -> int:
        """Begin a new phase and return it: an answer with `sent >= mark` was sent after this
        call, one with `done < mark` had its answer before it."""
        self.phase += 1
        return self.phase

    async def stop(self) -> None:
        """Stop sending and wait for every request sent to end (each is bounded by its
        deadline plus the grace)."""
        self._stop.set()
        assert self._runner is not None
        await self._runner
        await asyncio.gather(*self._tasks)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while not self._stop.is_set() and n < self.max_requests:
            due = start + n / self.rate
            delay = due - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            caller = self.callers[n % len(self.callers)]
            task = asyncio.create_task(self._one(n, caller))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1

    async def _one(self, n: int, caller: str) -> None:
        answer = Answer(caller, self.phase)
        self.answers.append(answer)
        headers = {
            "x-caller-id": caller,
            "x-retry-attempt": "0",  # a first try (and the path is unique anyway)
            "x-request-timeout-ms": str(DEADLINE_MS),
        }
        try:
            async with asyncio.timeout(DEADLINE_MS / 1000 + GRACE):
                async with self.session.get(f"{self.base}/token?n={n}", headers=headers) as r:
                    await r.read()
                    answer.status = r.status
                    answer.reason = r.headers.get("x-sluice-reason")
                    answer.retry_after = r.headers.get("Retry-After")
        except TimeoutError:
            answer.error = "hung past its deadline"
        except aiohttp.ClientError as exc:
            answer.error = f"{type(exc).__name__}: {exc}"
        answer.done = self.phase

    def ok_since(self, phase: int) -> int:
        """200s to requests sent since `phase` began."""
        return sum(1 for a in self.answers if a.status == 200 and a.sent >= phase)

    def answered_since(self, phase: int, reasons: set[str]) -> int:
        """Answers with one of `reasons` to requests sent since `phase` began."""
        return sum(1 for a in self.answers if a.sent >= phase and a.reason in reasons)


class StatusPoller:
    """Samples admin /status every ~50 ms: the modes seen, in order."""

    def __init__(self, session: aiohttp.ClientSession, admin: str) -> None:
        self.session = session
        self.admin = admin
        self.modes: list[str] = []
        self.last: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def mode(self) -> str | None:
        return self.modes[-1] if self.modes else None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(2.0):
                    self.last = await get_json(self.session, f"{self.admin}/status")
                mode = self.last["mode"]
                if not self.modes or self.modes[-1] != mode:
                    self.modes.append(mode)
            await asyncio.sleep(0.05)


async def reach(predicate: Any, timeout: float, what: str, poller: StatusPoller) -> None:
    """`wait_for` with a failure message that says what was awaited and what Sluice was
    doing."""
    try:
        await wait_for(predicate, timeout=timeout, interval=0.01)
    except AssertionError:
        last = {k: poller.last.get(k) for k in ("mode", "mode_reason", "limit", "in_flight")}
        last["queue"] = poller.last.get("queue", {}).get("total")
        raise AssertionError(f"no {what} in {timeout:g}s; modes {poller.modes}, {last}") from None


def check_answers(answers: list[Answer]) -> None:
    """Every request got an HTTP answer (none hung, none cut); every refusal is explicit and
    well-formed."""
    failed = [a for a in answers if a.error is not None or a.status is None]
    assert not failed, f"{len(failed)} requests without an answer, e.g. {failed[:3]}"
    for a in answers:
        if a.status == 200:
            continue
        assert a.reason in REASONS, f"an unexplained {a.status} (reason {a.reason!r})"
        assert a.status in REASONS[a.reason], f"{a.reason} sent as {a.status}"
        assert a.retry_after is not None and int(a.retry_after) >= 1, a


def gate_busy(status: dict[str, Any]) -> bool:
    """The limiter is full and requests wait behind it."""
    return bool(
        status and status["queue"]["total"] > 0 and status["in_flight"] >= status["limit_in_force"]
    )


def count_by(answers: list[Answer]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in answers:
        key = "200" if a.status == 200 else f"{a.status} {a.reason}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def transitions(status: dict[str, Any]) -> list[tuple[str, str]]:
    """(from, to) of the recorded transitions, oldest first."""
    return [(t["from"], t["to"]) for t in reversed(status.get("transitions", []))]


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(x in it for x in needle)


async def settled(session: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    """/status once nothing is in flight or queued, in the gate, the request path and the
    gauges (waits for it; fails if it never comes)."""
    doc: dict[str, Any] = {}
    gauges: dict[str, float] = {}

    async def poll() -> None:
        nonlocal doc, gauges
        while True:
            doc = await get_json(session, f"{admin}/status")
            async with session.get(f"{admin}/metrics") as r:
                gauges = metric_sums(await r.text(), ("sluice_in_flight", "sluice_queue_depth"))
            if (
                doc["in_flight"] == 0
                and doc["queue"]["total"] == 0
                and doc["requests_in_progress"] == 0
                and not any(gauges.values())
            ):
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), 20.0)  # only guards against a hang
    except TimeoutError:
        raise AssertionError(f"slots or queue entries leaked: {gauges} {doc}") from None
    return doc


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """The sum over all series of each named metric in a Prometheus text exposition."""
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    assert all(n in text for n in names), f"missing metrics {names}"
    return sums


def sluice_data(url: str, **sections: Any) -> dict[str, Any]:
    """Config data for a Sluice subprocess in front of `url`, with `sections` merged in."""
    data = process_config(
        url,
        lifecycle={"drain_timeout": "2s"},
        # Sluice answers by the deadline minus this margin: room for a noisy machine between
        # its answer and the client's clock, so "within the deadline" is a fair assertion.
        shedding={"deadline_margin": "200ms"},
    )
    return merge(data, sections)


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for p in reversed(made):
        p.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        yield s


async def test_upstream_killed_mid_storm_and_restarted(
    tmp_path: Path, procs: list[Any], session: aiohttp.ClientSession
) -> None:
    backend = BackendProcess(tmp_path, workers=32, service_time=0.01)  # ~3200/s: never binds
    procs.append(backend)
    backend.start()
    data = sluice_data(
        backend.url,
        upstream={
            "read_timeout": "2s",
            "connect_timeout": "500ms",
            "probe_interval": "100ms",
            "probe_interval_normal": "200ms",
            "probe_timeout": "300ms",
        },
        modes={
            "min_dwell": "300ms",
            "error_window": "1s",
            "outage_min_samples": 5,
            "startup_window": "0s",
        },
        # A tick (400 ms) longer than the deadline margin (200 ms): a waiter answered on the
        # tick after its wait ran out would be past its deadline. The gate answers it before
        # that tick (checked on a fake clock in tests/unit/test_gate.py); how late answers
        # come in wall time is printed by `python -m loadtest.bench_timing`.
        recovery={"hold": "500ms", "batch_interval": "400ms"},
    )
    sluice = SluiceProcess(tmp_path / "sluice.yaml", data)
    procs.append(sluice)
    sluice.start()
    admin = f"http://127.0.0.1:{sluice.admin_port}"
    poller = StatusPoller(session, admin)
    storm = Storm(session, f"http://127.0.0.1:{sluice.port}", 200, ("orch-a", "orch-b"), 3000)
    poller.start()
    storm.start()
    try:
        # Steady state first: served, NORMAL.
        await reach(lambda: storm.ok_since(0) >= 100, 20, "served before the kill", poller)
        assert poller.mode == "NORMAL", poller.modes

        backend.kill()
        killed = storm.mark()
        await reach(lambda: poller.mode == "OUTAGE", 20, "OUTAGE after the kill", poller)
        # The storm goes on against a dead backend: held, then answered from the table.
        held = {"outage", "deadline"}
        await reach(lambda: storm.answered_since(killed, held) >= 20, 20, "held answers", poller)
        outage_over = storm.mark()
        await asyncio.to_thread(backend.start)  # the same port; the storm goes on meanwhile
        restarted = storm.mark()
        await reach(lambda: storm.ok_since(restarted) >= 50, 20, "served after restart", poller)
        # From Sluice's own record of transitions (RECOVERY may pass between two samples).
        await reach(
            lambda: ("OUTAGE", "RECOVERY") in transitions(poller.last), 20, "RECOVERY", poller
        )
    finally:
        await storm.stop()
    answers = storm.answers
    during = [
        a for a in answers if a.sent >= killed and a.done is not None and a.done < outage_over
    ]
    after = [a for a in answers if a.sent >= restarted]
    print(
        f"\n{len(answers)} requests; all: {count_by(answers)}\n"
        f"killed..restart: {count_by(during)}\nafter restart: {count_by(after)}"
    )
    check_answers(answers)
    try:
        await reach(lambda: poller.mode == "NORMAL", 20, "NORMAL again", poller)
    finally:
        await poller.stop()
        print(f"modes seen {poller.modes}")
    status = await settled(session, admin)
    print(f"transitions {transitions(status)}")
    trail = [m for pair in transitions(status) for m in pair]
    assert is_subsequence(["NORMAL", "OUTAGE", "OUTAGE", "RECOVERY", "RECOVERY", "NORMAL"], trail)
    # While the backend was dead nothing was served, and each answer came from the table.
    seen = count_by(during)
    assert during and all(a.status != 200 for a in during), seen
    assert {a.reason for a in during} <= {
        "outage",
        "deadline",
        "upstream-connect",
        "upstream-error",
        "upstream-timeout",
        "overload",
    }, seen
    assert any(a.reason in ("outage", "deadline") for a in during), seen  # held or shed
    assert status["mode"] == "NORMAL"


async def test_sighup_reload_mid_storm_drops_nothing_and_applies_new_limits(
    tmp_path: Path, procs: list[Any], session: aiohttp.ClientSession
) -> None:
    # The backend could take ~640/s; the gate's ceiling of 4 x 50 ms lets ~80/s through, so
    # a 200/s storm keeps the limiter full with a queue behind it.
    backend = BackendProcess(tmp_path, workers=32, service_time=0.05)
    procs.append(backend)
    backend.start()
    data = sluice_data(
        backend.url,
        modes={"startup_window": "0s"},
        limiter={"floor": 2, "initial": 4, "ceiling": 4},
        queue={"max_size": 200},
        callers={"known": [{"name": "alpha"}, {"name": "beta"}]},
    )
    sluice = SluiceProcess(tmp_path / "sluice.yaml", data)
    procs.append(sluice)
    sluice.start()
    admin = f"http://127.0.0.1:{sluice.admin_port}"
    poller = StatusPoller(session, admin)
    storm = Storm(session, f"http://127.0.0.1:{sluice.port}", 200, ("alpha", "beta"), 3000)
    poller.start()
    storm.start()
    try:
        await reach(lambda: storm.ok_since(0) >= 50, 20, "served", poller)
        # Reload while the gate is busy: full limiter, waiters queued.
        await reach(lambda: gate_busy(poller.last), 20, "a busy gate", poller)
        busy = poller.last
        new = merge(
            data,
            {
                "limiter": {"ceiling": 8},
                "queue": {"max_size": 300},
                "callers": {"known": [{"name": "alpha"}, {"name": "beta", "cap": 0}]},
            },
        )
        sluice.write(new)
        hup = storm.mark()
        sluice.signal(signal.SIGHUP)
        await reach(lambda: poller.last.get("config_generation") == 2, 20, "reloaded", poller)
        reloaded = storm.mark()
        await reach(lambda: storm.ok_since(reloaded) >= 50, 20, "served after reload", poller)
        # The higher ceiling is usable: under this storm the learned limit climbs past 4.
        await reach(lambda: poller.last["limit"] > 4, 20, "a limit above the old ceiling", poller)
    finally:
        await storm.stop()
        await poller.stop()

    answers = storm.answers
    before = [a for a in answers if a.sent < hup]
    after = [a for a in answers if a.sent >= reloaded]
    by_caller = {
        f"{phase} {caller}": count_by([a for a in part if a.caller == caller])
        for phase, part in (("before", before), ("after", after))
        for caller in ("alpha", "beta")
    }
    print(
        f"\n{len(answers)} requests; busy at SIGHUP: in_flight {busy['in_flight']}, "
        f"queue {busy['queue']['total']}, mode {busy['mode']}; modes seen {poller.modes}\n"
        f"{by_caller}\nlimit {poller.last['limit']} bounds {poller.last['limit_bounds']}"
    )
    # Nothing dropped: every request, including those in flight or queued at the reload, got
    # a 200 or an explicit answer.
    check_answers(answers)
    status = await settled(session, admin)
    assert '"msg":"config reloaded"' in sluice.log()
    # The new limits are in force.
    assert status["config_generation"] == 2
    assert status["limit_bounds"] == [2, 8]
    assert status["queue"]["max"] == 300
    assert any(a.status == 200 for a in before if a.caller == "beta")
    beta_after = [a for a in after if a.caller == "beta"]
    assert beta_after and all((a.status, a.reason) == (429, "caller-cap") for a in beta_after)
    assert any(a.status == 200 for a in after if a.caller == "alpha")
