"""The rules the layout promises (README, "Where each line lives"), checked on the source.

- asyncio, aiohttp and the Redis client only in the edge, the upstream pool, the scheduler's
  waiter, the control ticker and the fleet link: every other module of proxy/ is pure and
  takes `now`;
- no function in proxy/ over 60 lines;
- no test reaches into a private name of another module (tests use public views).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "proxy"
TESTS = ROOT / "tests"
# fleet/link.py: the fleet's one I/O module (the Redis client runs its exchange as a task);
# everything else of fleet/ is pure.
ASYNC_HOMES = (
    "edge/",
    "upstream/",
    "scheduler/waiter.py",
    "control/ticker.py",
    "fleet/link.py",
)
EVENT_LOOP = {"asyncio", "aiohttp", "uvloop", "redis"}
MAX_FUNCTION = 60


def _modules(root: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.Module) -> Iterator[tuple[str, list[str]]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            yield node.module, [a.name for a in node.names]


def test_only_the_edge_and_the_loop_s_own_helpers_import_the_event_loop() -> None:
    offenders = []
    for path, tree in _modules(PROXY):
        rel = path.relative_to(PROXY).as_posix()
        if rel.startswith(ASYNC_HOMES):
            continue
        for module, _ in _imports(tree):
            if module.split(".")[0] in EVENT_LOOP:
                offenders.append(f"{rel} imports {module}")
    assert not offenders, offenders


def test_no_function_in_proxy_is_longer_than_60_lines() -> None:
    long = []
    for path, tree in _modules(PROXY):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n})")
    assert not long, long


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """`obj._name` on anything but self/cls, `setattr/getattr(obj, "_name")`, and
    `from proxy... / loadtest... import _name`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                yield node.lineno, f".{node.attr}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            args = node.args
            if name in ("setattr", "getattr", "delattr") and len(args) >= 2:
                key = args[1]
                text = key.value if isinstance(key, ast.Constant) else None
                if isinstance(text, str) and _private(text):
                    yield node.lineno, f'{name}(..., "{text}")'
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            ours = node.module.split(".")[0] in ("proxy", "loadtest")
            for alias in node.names:
                if ours and _private(alias.name):
                    yield node.lineno, f"import {alias.name} from {node.module}"


def test_no_test_touches_a_private_name_of_another_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} {what}"
        for path, tree in _modules(TESTS)
        for line, what in _private_uses(tree)
    ]
    assert not found, found


def test_the_private_name_check_sees_what_it_must() -> None:
    # The check itself can fail: each form it must catch is caught in a sample.
    sample = ast.parse(
        "g._queued\n"
        "monkeypatch.setattr(m, '_WAKE_CHUNK', 4)\n"
        "from proxy.scheduler.waiter import _WAKE_CHUNK\n"
        "self._mine\n"
    )
    assert sorted(what for _, what in _private_uses(sample)) == sorted(
        [
            "._queued",
            'setattr(..., "_WAKE_CHUNK")',
            "import _WAKE_CHUNK from proxy.scheduler.waiter",
        ]
    )
