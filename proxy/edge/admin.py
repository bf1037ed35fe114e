"""The admin listener: /metrics, /healthz, /readyz, /status, POST /reload, POST /mode.

Bound to 127.0.0.1 by default. Mutating calls need the bearer token (compared in constant
time); without a configured token they are refused outright rather than left open.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.aiohttp import make_aiohttp_handler

from ..config import AdminConfig
from ..ops.metrics import Metrics
from .forward import SERVER

log = logging.getLogger("sluice.admin")

ReloadFn = Callable[[], Awaitable[dict[str, Any]]]


class TokenError(Exception):
    """The admin token could not be read safely: `field` is the config key at fault and
    `problem` what is wrong with it (start-up and check-config report it as a field error)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def load_admin_token(config: AdminConfig) -> str | None:
    """The bearer token from `token_file` (refused if world-readable) or `token_env`."""
    if config.token_file is not None:
        path = Path(config.token_file)
        field = "admin.token_file"
        try:
            mode = path.stat().st_mode
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenError(field, f"cannot read {path}: {exc}") from None
        if mode & stat.S_IRWXO:
            raise TokenError(field, f"{path} is world-readable; chmod 600 (or 640) it")
        if not token:
            raise TokenError(field, f"{path} is empty")
        return token
    if config.token_env:
        token = os.environ.get(config.token_env, "").strip()
        return token or None
    return None


def metrics_response(metrics: Metrics) -> web.Response:
    """Prometheus text exposition of this process's registry."""
    resp = web.Response(body=generate_latest(metrics.registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc, default=str), status=status, content_type="application/json"
    )


class Admin:
    """Admin handlers over a running Sluice (passed in as callables to keep this module thin)."""

    def __init__(
        self,
        metrics: Metrics,
        token: str | None,
        status: Callable[[], dict[str, Any]],
        reload: ReloadFn,
        command: Callable[..., dict[str, Any]],
        is_draining: Callable[[], bool],
    ) -> None:
        self.metrics = metrics
        self.token = token
        self._status = status
        self._reload = reload
        self._command = command
        self._is_draining = is_draining

    def _authorized(self, request: web.Request) -> web.Response | None:
        """None when the bearer token matches; otherwise the refusal to send."""
        if self.token is None:
            log.warning(
                "admin call refused: no admin token configured",
                extra={"path": request.path, "peer": request.remote},
            )
            return _json({"error": "no admin token configured (admin.token_file/env)"}, 403)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            log.warning(
                "admin call refused: bad or missing bearer token",
                extra={"path": request.path, "peer": request.remote},
            )
            return _json({"error": "unauthorized"}, 401)
        return None

    async def healthz(self, request: web.Request) -> web.Response:
        """Sluice's own liveness: the loop answers. Never the backend's health."""
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """503 only while draining; never because of a mode (the storm must not move pods)."""
        if self._is_draining():
            return _json({"status": "draining"}, 503)
        return _json({"status": "ready"})

    async def status(self, request: web.Request) -> web.Response:
        """Mode, limits, queues, in-flight, last transitions (no secrets)."""
        return _json(self._status())

    async def reload(self, request: web.Request) -> web.Response:
        """Re-read the config file; 200 with the result, 400 when it was invalid/refused."""
        denied = self._authorized(request)
        if denied is not None:
            return denied
        result = await self._reload()
        return _json(result, 200 if result.get("ok") else 400)

    async def mode(self, request: web.Request) -> web.Response:
        """Operator command: {"mode": "recovery"|"shield"|"normal"|"dry-run", ...params}."""
        denied = self._authorized(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return _json({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("mode"), str):
            return _json({"error": 'body must be {"mode": "...", ...}'}, 400)
        params = {k: v for k, v in body.items() if k != "mode"}
        try:
            result = self._command(body["mode"], **params)
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)
        log.info("operator command", extra={"mode": body["mode"], "params": params})
        return _json(result)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Admin answers are Sluice's own: `Server: sluice`, no versions (aiohttp's default names
    Python's and its own)."""
    response.headers["Server"] = SERVER


def build_admin_app(admin: Admin) -> web.Application:
    """The admin aiohttp application."""
    app = web.Application(client_max_size=64 * 1024)
    app.on_response_prepare.append(_server_header)
    app.router.add_get("/healthz", admin.healthz)
    app.router.add_get("/readyz", admin.readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(admin.metrics.registry))
    app.router.add_get("/status", admin.status)
    app.router.add_post("/reload", admin.reload)
    app.router.add_post("/mode", admin.mode)
    return app
