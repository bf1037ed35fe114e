"""Child processes of the harness: free ports, configs, start, readiness, CPU and memory, teardown.

The one home of these helpers for every command of loadtest/ (replays, sweep, bench, soak,
bench_timing). Every child runs on 127.0.0.1, in its own session and so its own process group (a
Ctrl-C reaches only the harness, which then tears down in order), with a parent-death signal (a
killed harness leaves no orphans), its output in a log file, and is stopped by process group:
SIGTERM, then SIGKILL (a group, so what a child forks, such as nginx's workers, goes with it).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIVE: set[ProcessGroup] = set()  # groups with children possibly running (atexit net)


def _stop_live_groups() -> None:
    for group in list(_LIVE):
        group.stop_all(timeout=3.0)


atexit.register(_stop_live_groups)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_termination() -> None:
    """Make SIGTERM and SIGHUP behave like Ctrl-C, so every teardown path runs."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_port(port: int, timeout: float = 15.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Until something accepts on 127.0.0.1:`port`; RuntimeError when `alive()` turns False
    (the child meant to listen there exited) or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process for port {port} exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def merge_sections(
    base: Mapping[str, Any], extra: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """A copy of the config document `base` with each section of `extra` merged into the
    section of that name (keys of `extra` win; sections keep their order, new ones go last)."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def write_sluice_config(
    path: Path,
    *,
    port: int,
    upstream_port: int,
    admin_port: int,
    base: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    drain_grace: str | None = "0s",
) -> Path:
    """Write the Sluice config of a child to `path`: `base` (a config document; default empty)
    listening on 127.0.0.1:`port`, forwarding to 127.0.0.1:`upstream_port`, its admin listener on
    127.0.0.1:`admin_port`, then `overrides` (see `merge_sections`). The sections keep the order
    they have, so a config copied from a scenario reads as written. Unless `base` or `overrides`
    set it, `lifecycle.drain_grace` is `drain_grace` (None: not written): 0 by default, since the
    harness stops its children with SIGTERM when a run is over and no load balancer needs the
    grace to notice."""
    loopback: dict[str, dict[str, Any]] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstream": {"url": f"http://127.0.0.1:{upstream_port}"},
        "admin": {"host": "127.0.0.1", "port": admin_port},
    }
    data = merge_sections(merge_sections(base or {}, loopback), overrides or {})
    if drain_grace is not None:
        data.setdefault("lifecycle", {}).setdefault("drain_grace", drain_grace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --- what a child costs, from /proc ---------------------------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far, its threads included (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        # The command name is in parentheses and may contain spaces: split after the last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (nginx: master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                text = Path(f"/proc/{p}/task/{task}/children").read_text()
                todo.extend(int(c) for c in text.split())
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its descendants (those gone by now count 0)."""
    return sum(cpu_seconds(p) or 0.0 for p in descendants(pid))


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MB (VmRSS; nan when it has none, a zombie)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


@dataclass
class Child:
    """One started process."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    cpu_marks: dict[str, float] = field(default_factory=dict)
    cpu_tree: bool = False  # measure its descendants too (a wrapper such as `timeout`)

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its output (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def mark_cpu(self, label: str) -> None:
        """Remember its CPU seconds under `label` (to compute a share between two marks)."""
        value = tree_cpu_seconds(self.pid) if self.cpu_tree else cpu_seconds(self.pid)
        if value is not None:
            self.cpu_marks[label] = value


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a session (and process group) of its own, dying with this process, its
    output (stdout and stderr) to `log_path`, unbuffered if it is Python."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process group `popen` leads (nothing if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def stop_groups(popens: Sequence[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    """Stop the process group of each child still running, in the order given: SIGTERM to all,
    a wait for each until one shared deadline `timeout` s away, SIGKILL for the groups of those
    still running then; last, SIGKILL to those groups once more, for members that outlive a
    leader killed hard (nginx's workers). A child that had ended before is left alone: its
    process id may belong to someone else by now."""
    running = [p for p in popens if p.poll() is None]
    for popen in running:
        signal_group(popen, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for popen in running:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(popen, signal.SIGKILL)
            popen.wait(timeout=5.0)
    for popen in running:
        signal_group(popen, signal.SIGKILL)


class ProcessGroup:
    """Starts children and guarantees they are stopped (use as a context manager)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir  # also the work folder of the children's files (configs)
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start `python args...` with output to `<log_dir>/<name>.log`."""
        return self.start_argv(name, [sys.executable, *args], env, cwd)

    def start_argv(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start any program (`argv`) with output to `<log_dir>/<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        popen = spawn(argv, log_path, env, cwd)
        child = Child(name, list(argv), log_path, popen)
        self.children.append(child)
        _LIVE.add(self)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        """Stop one child's process group now (see `stop_groups`) and forget it."""
        stop_groups([child.popen], timeout)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every child's process group, newest first (see `stop_groups`)."""
        _LIVE.discard(self)
        stop_groups([child.popen for child in reversed(self.children)], timeout)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
