"""Sluice configuration: YAML loading, errors that name the field, deprecated keys, and the
fields a reload cannot change.

The schema is in `config_schema.py` (its sections by concern in `config_network.py`,
`config_admission.py`, `config_control.py` and `config_process.py`), the value syntax
(durations are written `250ms`, `5s`, `2m`, `1h` and held as float seconds) in
`config_fields.py`; all are re-exported here, so `from proxy.config import Config,
parse_duration, ...` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from .config_admission import (
    CallerConfig,
    CallersConfig,
    QueueConfig,
    RegionConfig,
    RetryBudgetConfig,
    RetryDetectConfig,
    SheddingConfig,
)
from .config_control import LimiterConfig, ModesConfig, RecoveryConfig
from .config_fields import (
    Cidr,
    Duration,
    HeaderName,
    Port,
    Strict,
    duration_text,
    parse_duration,
)
from .config_network import (
    AdminConfig,
    HeadersConfig,
    ListenConfig,
    TlsConfig,
    TrustConfig,
    UpstreamConfig,
)
from .config_process import FleetConfig, LifecycleConfig, LoggingConfig
from .config_schema import PRIORITY_CLASSES, Config
from .upstream.tls import TlsSettingError, upstream_tls

__all__ = [
    "DEPRECATED",
    "PRIORITY_CLASSES",
    "RESTART_ONLY",
    "AdminConfig",
    "CallerConfig",
    "CallersConfig",
    "Cidr",
    "Config",
    "ConfigError",
    "Duration",
    "FieldError",
    "FleetConfig",
    "HeaderName",
    "HeadersConfig",
    "LifecycleConfig",
    "LimiterConfig",
    "ListenConfig",
    "LoggingConfig",
    "ModesConfig",
    "Port",
    "QueueConfig",
    "RecoveryConfig",
    "RegionConfig",
    "RetryBudgetConfig",
    "RetryDetectConfig",
    "SheddingConfig",
    "Strict",
    "TlsConfig",
    "TrustConfig",
    "UpstreamConfig",
    "duration_text",
    "load_config",
    "load_config_data",
    "parse_duration",
    "restart_only_changes",
]

# Fields that cannot change on reload: the sockets are already bound.
RESTART_ONLY: tuple[tuple[str, str], ...] = (
    ("listen", "host"),
    ("listen", "port"),
    ("listen", "backlog"),
    ("admin", "host"),
    ("admin", "port"),
    ("lifecycle", "gc_pacing"),
    ("limiter", "algorithm"),
)


@dataclass(frozen=True)
class FieldError:
    """One problem in a config file, located by its dotted field path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The config could not be loaded; `errors` lists every problem with its field path."""

    def __init__(self, source: str, errors: Sequence[FieldError]) -> None:
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"invalid config {source}:\n{lines}")


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _from_validation_error(source: str, exc: ValidationError) -> ConfigError:
    errors = []
    for err in exc.errors(include_url=False):
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field is missing"
        msg = msg.removeprefix("Value error, ")
        errors.append(FieldError(_dotted(tuple(err["loc"])), msg))
    return ConfigError(source, errors)


# Keys a release removed, still accepted for one more release and ignored, with a warning:
# unknown keys are errors, and an upgrade must not stop a running config from reloading.
# "section.key" -> what to do instead.
DEPRECATED: Mapping[str, str] = MappingProxyType(
    {
        "limiter.growth": "the limit grows by a step that starts at limiter.knee_growth after "
        "a cut and doubles with each healthy window",
    }
)


def _without_deprecated(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` without the deprecated keys it sets (copied where changed), and a warning
    for each."""
    notes = []
    out = dict(data)
    for dotted, instead in DEPRECATED.items():
        section, key = dotted.split(".", 1)
        body = out.get(section)
        if isinstance(body, dict) and key in body:
            out[section] = {k: v for k, v in body.items() if k != key}
            notes.append(f"{dotted} is deprecated and ignored: {instead}")
    return out, notes


def load_config_data(data: Any, source: str = "<data>") -> Config:
    """Validate already-parsed YAML data into a `Config`, or raise `ConfigError`: the schema,
    then the upstream TLS files. Deprecated keys are dropped; `Config.deprecations` says
    which."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [FieldError("", "the top level must be a mapping")])
    data, notes = _without_deprecated(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(source, exc) from None
    try:
        # The files it names are loaded as start-up will load them (the context is dropped).
        upstream_tls(config.upstream)
    except TlsSettingError as exc:
        errors = [FieldError(f"upstream.tls.{p.field}", p.message) for p in exc.problems]
        raise ConfigError(source, errors) from None
    config._deprecations = tuple(notes)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file, or raise `ConfigError` (never anything else)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [FieldError("", f"cannot read file: {exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [FieldError("", _yaml_problem(source, text, exc))]) from None
    except RecursionError:
        raise ConfigError(source, [FieldError("", "YAML nested too deeply")]) from None
    if _expanded_size(data, _MAX_NODES) > _MAX_NODES:
        # YAML aliases share objects, so a "billion laughs" file loads instantly and then
        # expands exponentially once validation walks it.
        raise ConfigError(
            source, [FieldError("", f"more than {_MAX_NODES} values once aliases are expanded")]
        )
    return load_config_data(data, source)


_MAX_NODES = 100_000


def _yaml_problem(source: str, text: str, exc: yaml.YAMLError) -> str:
    """One line naming the file, line and column (1-based) and what is wrong there.

    PyYAML's own message names `<unicode string>` (it parsed text, not the file) and spreads
    over several lines with a snippet; an operator wants `file, line, column: problem`."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        cm = exc.context_mark
        if exc.problem and exc.context and cm is not None and cm is not mark:
            # e.g. "expected ',' or ']' (while parsing a flow sequence at line 1, column 9)"
            problem += f" ({exc.context} at line {cm.line + 1}, column {cm.column + 1})"
        elif exc.problem and exc.context:
            problem += f" ({exc.context})"
        if mark is None:
            return f"not valid YAML: {source}: {problem}"
        return f"not valid YAML: {_where(source, mark.line, mark.column)}: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        # Raised before there is any mark: `position` counts characters of the text.
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        what = f"character #x{exc.character:04x}: {exc.reason}"
        return f"not valid YAML: {_where(source, line, column)}: {what}"
    return f"not valid YAML: {source}: {exc}"


def _where(source: str, line: int, column: int) -> str:
    """`file, line L, column C` from PyYAML's 0-based line and column."""
    return f"{source}, line {line + 1}, column {column + 1}"


def _expanded_size(data: Any, budget: int) -> int:
    """How many values `data` holds with shared (aliased) objects counted every time they
    appear; stops counting past `budget`."""
    count = 0
    stack = [data]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Dotted names of fields that changed between configs but need a restart to apply."""
    changed = []
    for section, name in RESTART_ONLY:
        if getattr(getattr(old, section), name) != getattr(getattr(new, section), name):
            changed.append(f"{section}.{name}")
    return changed
