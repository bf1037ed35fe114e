"""The config's network sections: where Sluice listens (`listen`), the upstream it forwards to
and its TLS (`upstream`), which headers carry a request's facts (`headers`), whose headers are
believed (`trust`), and the admin listener (`admin`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .config_fields import Cidr, Duration, HeaderName, HostName, Port, Strict


class ListenConfig(Strict):
    host: str = "0.0.0.0"
    port: Port = 8080
    backlog: int = Field(4096, ge=1, description="listen(2) backlog; 128 drops a reopening")
    keepalive_timeout: Duration = 75.0
    header_read_timeout: Duration = 10.0
    max_line_size: int = Field(8190, ge=256)
    max_field_size: int = Field(8190, ge=256)
    max_headers: int = Field(128, ge=1, description="how many request header fields")
    max_body_size: int = Field(16 * 1024 * 1024, ge=0, description="0 means unlimited")
    expose_metrics: bool = False


class TlsConfig(Strict):
    """TLS towards an https:// upstream; the files are read at start-up (restart to change)."""

    ca_file: Path | None = Field(
        None,
        description="PEM CA certificates trusted for the upstream's certificate, instead of "
        "the system store",
    )
    cert_file: Path | None = Field(
        None, description="client certificate (PEM, intermediates after it) for mutual TLS"
    )
    key_file: Path | None = Field(
        None, description="the client certificate's unencrypted PEM key; omit if in cert_file"
    )
    server_name: HostName | None = Field(
        None,
        description="the name sent as SNI and checked against the upstream's certificate, "
        "instead of the url's host",
    )
    verify: bool = Field(
        True, description="check the upstream's certificate; off logs a warning at start"
    )


class UpstreamConfig(Strict):
    url: str
    client: Literal["aiohttp", "lean"] = "lean"  # passes the suite aiohttp passes, and its xfails
    connect_timeout: Duration = 1.0
    read_timeout: Duration = 30.0
    pool_size: int = Field(256, ge=1)
    pool_idle_timeout: Duration = Field(
        15.0, description="close idle upstream connections before the backend's idle timeout"
    )
    health_path: str = "/healthz"
    probe_interval: Duration = 1.0
    probe_interval_normal: Duration = 10.0
    probe_timeout: Duration = 1.0
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _check_url(self) -> UpstreamConfig:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port][/prefix], got {self.url!r}")
        return self

    @field_validator("tls")
    @classmethod
    def _tls_needs_https(cls, tls: TlsConfig, info: ValidationInfo) -> TlsConfig:
        # Settings that would silently do nothing (a client certificate never sent) are refused.
        from urllib.parse import urlsplit

        url = info.data.get("url")
        if isinstance(url, str) and urlsplit(url).scheme != "https" and tls != TlsConfig():
            raise ValueError(f"TLS settings need an https:// url (upstream.url is {url!r})")
        return tls


class HeadersConfig(Strict):
    caller_id: HeaderName = "x-caller-id"
    retry_attempt: HeaderName = "x-retry-attempt"
    attempt_aliases: list[HeaderName] = [
        "x-envoy-attempt-count",
        "grpc-previous-rpc-attempts",
        "amz-sdk-request",
    ]
    # Per-call ids that SDKs keep across their own retries: a second sighting is a retry.
    call_ids: list[HeaderName] = ["x-ms-client-request-id", "amz-sdk-invocation-id"]
    origin_region: HeaderName = "x-origin-region"
    priority: HeaderName = "x-priority"
    request_timeout_ms: HeaderName = "x-request-timeout-ms"
    request_deadline_ms: HeaderName = "x-request-deadline-ms"
    request_start: HeaderName = "x-request-start"
    request_id: HeaderName = "x-request-id"


class TrustConfig(Strict):
    sources: list[Cidr] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="peers whose caller, priority, region and forwarded headers are believed",
    )
    absolute_deadline: bool = Field(
        False, description="honour x-request-deadline-ms (epoch ms); clocks skew, so off"
    )
    request_start: bool = Field(
        False,
        description="from trusted peers, count a request's time from x-request-start (when "
        "the balancer in front received it: epoch s, ms or us, `t=` prefix optional), so "
        "the time it waited there counts against its timeout; two hosts' clocks skew, so off",
    )


class AdminConfig(Strict):
    host: str = "127.0.0.1"
    port: Port = 9901
    token_file: Path | None = None
    token_env: str | None = "SLUICE_ADMIN_TOKEN"
