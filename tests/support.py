"""Shared helpers for integration tests: backends on loopback, Sluice in-process or as a
subprocess, free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from proxy.config import Config, load_config_data
from proxy.edge.lifecycle import Server, start_server

ROOT = Path(__file__).resolve().parent.parent
# The gate the integration tests run with unless a test says otherwise.
DEFAULT_PROTECTION = "on"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into a copy of `base`."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def sluice_config(upstream_url: str, **sections: Any) -> Config:
    """A config for in-process tests: ephemeral ports, quiet logs, quick drain (no grace: a
    test about the drain grace sets its own)."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"url": upstream_url, "read_timeout": "5s", "connect_timeout": "1s"},
        "admin": {"host": "127.0.0.1", "port": 0, "token_env": "SLUICE_TEST_TOKEN"},
        "lifecycle": {"drain_timeout": "2s", "drain_grace": "0s", "raise_nofile": False},
        "modes": {"protection": DEFAULT_PROTECTION},
    }
    return load_config_data(merge(data, sections))


class EchoBackend:
    """A backend with handlers for every behaviour the proxy tests need."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release_slow = asyncio.Event()
        self.app = web.Application(client_max_size=1024**3)
        r = self.app.router
        r.add_route("*", "/echo{tail:.*}", self.echo)
        r.add_route("*", "/sha{tail:.*}", self.sha)
        r.add_get("/big/{n}", self.big)
        r.add_get("/slow", self.slow)
        r.add_get("/hold", self.hold)
        r.add_get("/hang", self.hang)
        r.add_get("/reset", self.reset)
        r.add_get("/hop", self.hop)
        r.add_get("/healthz", self.healthz)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=0.5, auto_decompress=False
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        self.release_slow.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        doc = {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
        }
        self.requests.append(doc)
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def sha(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def big(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        resp = web.StreamResponse()
        resp.content_length = n
        await resp.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < n:
            part = block[: min(len(block), n - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"slow": True})

    async def hold(self, request: web.Request) -> web.Response:
        await self.release_slow.wait()
        return web.json_response({"held": True})

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def reset(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1_000_000
        await resp.prepare(request)
        await resp.write(b"x" * 10_000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def hop(self, request: web.Request) -> web.Response:
        headers = {
            "Connection": "x-secret-hop",
            "x-secret-hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "x-end-to-end": "kept",
        }
        return web.Response(text="hop", headers=headers)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


@contextlib.asynccontextmanager
async def running_backend() -> AsyncIterator[EchoBackend]:
    """An EchoBackend on an ephemeral loopback port."""
    backend = EchoBackend()
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


@contextlib.asynccontextmanager
async def running_sluice(config: Config) -> AsyncIterator[Server]:
    """Sluice in this process's loop, on ephemeral ports; drained on exit."""
    server = await start_server(config)
    try:
        yield server
    finally:
        await server.shutdown()


class SluiceProcess:
    """Sluice as a real subprocess (for signals and memory), config written to `path`."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.port = int(data["listen"]["port"])
        self.admin_port = int(data["admin"]["port"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = path.with_suffix(".log")

    def write(self, data: dict[str, Any] | str) -> None:
        text = data if isinstance(data, str) else yaml.safe_dump(data)
        self.path.write_text(text)

    def start(self, timeout: float = 10.0) -> None:
        self.write(self.data)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited early:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.admin_port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sluice did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def rss_peak_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def process_config(upstream: str, **sections: Any) -> dict[str, Any]:
    """Config data for a Sluice subprocess on fresh ports (no drain grace unless a test sets
    one: every test's teardown sends SIGTERM)."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "upstream": {"url": upstream, "read_timeout": "5s"},
        "admin": {"host": "127.0.0.1", "port": free_port(), "token_env": "SLUICE_TEST_TOKEN"},
        "lifecycle": {"drain_timeout": "5s", "drain_grace": "0s"},
        "modes": {"protection": DEFAULT_PROTECTION},
    }
    return merge(data, sections)


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.02) -> None:
    """Poll `predicate()` until true; raise AssertionError after `timeout`. The timeout only
    guards against a hang (well inside pytest-timeout's 60 s): it is never the thing tested.
    `interval=0` polls every event-loop iteration (to catch a state that lasts one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not reached in time")


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    """GET a URL and decode its JSON body."""
    async with session.get(url) as resp:
        return orjson.loads(await resp.read())
