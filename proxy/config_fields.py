"""The config's value syntax: durations (`250ms`, `5s`, `2m`, `1h`, held as float seconds),
CIDRs, header names, host names and ports as pydantic field types, and the strict base of
every section.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Parse `250ms`, `5s`, `2m`, `1h` into seconds; bare numbers are refused (ambiguous)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration needs a unit, like '250ms', '5s' or '2m' (got {value!r})")
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use a unit: '250ms', '5s', '2m', '1h')")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _check_cidr(value: str) -> str:
    ipaddress.ip_network(value, strict=False)
    return value


def _check_header_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        raise ValueError(f"not a valid HTTP header name: {value!r}")
    return value.lower()


_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


def _check_host_name(value: str) -> str:
    """A DNS name or an IP address, as TLS checks a certificate against (no port, no scheme)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if len(value) > 253 or not _HOST_NAME_RE.match(value):
            raise ValueError(f"not a host name or IP address: {value!r}") from None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Cidr = Annotated[str, AfterValidator(_check_cidr)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
Port = Annotated[int, Field(ge=0, le=65535)]
HostName = Annotated[str, AfterValidator(_check_host_name)]


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def duration_text(seconds: float) -> str:
    """Format seconds back into the config's duration syntax (for logs and /status)."""
    if seconds >= 1 and math.isclose(seconds, round(seconds)):
        return f"{round(seconds)}s"
    return f"{round(seconds * 1000)}ms"
