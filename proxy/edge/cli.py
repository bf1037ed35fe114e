"""Command line: `sluice --config FILE` runs the proxy; `sluice check-config FILE` validates."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import ConfigError
from ..logs import setup_logging
from .admin import TokenError
from .preflight import preflight

DEFAULT_CONFIG = Path("/etc/sluice/sluice.yaml")
# What `sluice --config` and `sluice check-config` exit with when the config is refused.
EXIT_BAD_CONFIG = 2

_DESCRIPTION = """\
Sluice: a recovery-mode load-shedding reverse proxy.

Runs in front of one backend instance (a sidecar). When a blocked backlog reopens at once,
Sluice switches to RECOVERY, admits deferred work in controlled batches into a learned
concurrency limit, caps each caller, keeps retries within a budget and sheds the excess with
an explicit answer and a paced Retry-After.
"""

_EPILOG = """\
commands:
  sluice --config FILE          run the proxy (SIGHUP reloads FILE, SIGTERM drains)
  sluice check-config FILE      validate FILE as start would (exit 0, or 2 and every error
                                with its field path)

admin (127.0.0.1:9901 by default): /healthz /readyz /metrics /status, POST /reload, POST /mode
docs: README.md (configuration reference, metrics, runbook)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"YAML config file (default: {DEFAULT_CONFIG})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check-config",
        help="validate a config file and exit (0 = valid)",
        description="Validate a config file like `nginx -t`, with every check start makes "
        "before it binds its ports (the admin token file too): exit 0 when valid, otherwise 2 "
        "and every error with its dotted field path.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    run = sub.add_parser("run", help="run the proxy (the default command)")
    run.add_argument("--config", "-c", type=Path, dest="run_config", metavar="FILE")
    return parser


def _print_config_error(exc: ConfigError) -> None:
    print(f"sluice: invalid config {exc.source}", file=sys.stderr)
    for err in exc.errors:
        print(f"  {err}", file=sys.stderr)


def check_config(path: Path) -> int:
    """Validate `path` as start would (`preflight`); print the verdict. Returns the exit
    code."""
    try:
        config = preflight(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    for note in config.deprecations:
        print(f"sluice: warning: {path}: {note}", file=sys.stderr)
    print(
        f"sluice: config {path} is valid (upstream {config.upstream.url}, "
        f"listen {config.listen.host}:{config.listen.port}, protection {config.modes.protection})"
    )
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where available, plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(coro: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sluice` console command."""
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    path = getattr(args, "run_config", None) or args.config or DEFAULT_CONFIG
    try:
        config = preflight(path)  # the same checks as check-config, before anything is bound
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    setup_logging(config.logging.level)
    for note in config.deprecations:
        logging.getLogger("sluice").warning(note, extra={"file": str(path)})
    from .lifecycle import run

    try:
        return _run(run(config, path))
    except TokenError as exc:  # the file changed since preflight read it
        logging.getLogger("sluice").error("refusing to start", extra={"error": str(exc)})
        return EXIT_BAD_CONFIG
    except OSError as exc:  # what only binding finds: a port in use, an address not here
        logging.getLogger("sluice").error("cannot start", extra={"error": str(exc)})
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
