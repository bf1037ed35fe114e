"""Structured logs: one JSON object per line (orjson), fields passed with `extra=`."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line: ts, level, logger, msg, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "info") -> None:
    """Route every `sluice.*` logger (and aiohttp's) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("sluice").setLevel(level.upper())


def set_level(level: str) -> None:
    """Change the `sluice` log level (on reload)."""
    logging.getLogger("sluice").setLevel(level.upper())


class LineBudget:
    """How many log lines may be written now: a token bucket refilled at `rate` lines a second
    that holds at most one second's worth (never less than one line).

    A storm therefore gets a steady `rate` lines a second, spread evenly over the second rather
    than all at its start, and a quiet spell gets back a full second's burst. Pure: the caller
    passes `now` (monotonic seconds) and the rate on every call, so a reload's new rate applies
    from the next line. `rate` 0 refuses every line. The lines refused are counted until
    `take_suppressed` collects the count.
    """

    __slots__ = ("_stamp", "_suppressed", "_tokens")

    def __init__(self, now: float) -> None:
        self._stamp = now
        self._tokens = float("inf")  # full: capped to the first call's burst
        self._suppressed = 0

    def allow(self, now: float, rate: float) -> bool:
        """Take one line from the budget: True if it may be written, else it is counted."""
        if rate <= 0.0:
            self._suppressed += 1
            return False
        tokens = self._tokens
        elapsed = now - self._stamp
        if elapsed > 0.0:  # a `now` older than the last one adds nothing
            tokens += elapsed * rate
            self._stamp = now
        burst = rate if rate > 1.0 else 1.0
        if tokens > burst:
            tokens = burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        self._suppressed += 1
        return False

    @property
    def suppressed(self) -> int:
        """Lines refused since the count was last collected."""
        return self._suppressed

    def take_suppressed(self) -> int:
        """The lines refused since the last call, and the count starts again from zero."""
        count = self._suppressed
        self._suppressed = 0
        return count
