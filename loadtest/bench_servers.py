"""The bench's servers: the backends, the proxies compared with Sluice, Sluice itself and the
floors of its stack, each started pinned (see bench_rig) in the bench's process group.

nginx and HAProxy run from configs written here; the minimal forwarder is
loadtest/minimal_forwarder.py; the floor rows and the slow backend of the memory test are the
bench's own servers, run as `python -m loadtest.bench --floor-server …` / `--slow-backend …`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .bench_rig import ADMIN_TOKEN, BODY, LOAD_CORE, PROXY_CORE, http_call, start_pinned
from .procs import Child, ProcessGroup, free_port, merge_sections, write_sluice_config


def _nginx_conf(workdir: Path, name: str, body: str) -> Path:
    prefix = workdir / name
    prefix.mkdir(exist_ok=True)
    # nginx drops its worker to `nobody` when started as root; this dir is ours (0700).
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""{user}worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
{body}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def start_nginx_backend(group: ProcessGroup, port: int) -> Child:
    """nginx answering every path with the static JSON token (core LOAD_CORE)."""
    body = f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{BODY}';
        }}
    }}"""
    conf = _nginx_conf(group.log_dir, "nginx-backend", body)
    return start_pinned(
        group, "nginx-backend", ["nginx", "-p", str(conf.parent), "-c", str(conf)], LOAD_CORE
    )


def start_python_backend(group: ProcessGroup, port: int) -> Child:
    """Fallback backend without nginx: bench_upstream's raw asyncio keep-alive responder."""
    argv = [sys.executable, "-m", "loadtest.bench_upstream", "--backend", str(port)]
    return start_pinned(group, "py-backend", argv, LOAD_CORE)


def start_nginx_proxy(group: ProcessGroup, port: int, backend: int) -> Child:
    """nginx as a reverse proxy: 1 worker, upstream keep-alive pool of 512 (> 256 conns)."""
    body = f"""    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 512;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    conf = _nginx_conf(group.log_dir, "nginx-proxy", body)
    return start_pinned(
        group, "nginx-proxy", ["nginx", "-p", str(conf.parent), "-c", str(conf)], PROXY_CORE
    )


def start_haproxy(group: ProcessGroup, port: int, backend: int) -> Child:
    """HAProxy: one thread, `http-reuse always`, foreground (-db)."""
    conf = group.log_dir / "haproxy.cfg"
    conf.write_text(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
""")
    return start_pinned(group, "haproxy", ["haproxy", "-db", "-f", str(conf)], PROXY_CORE)


def start_forwarder(group: ProcessGroup, port: int, backend: int) -> Child:
    """The minimal aiohttp + uvloop forwarder of issue 7."""
    argv = [
        sys.executable,
        "-m",
        "loadtest.minimal_forwarder",
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{backend}",
    ]
    return start_pinned(group, "forwarder", argv, PROXY_CORE)


_REFUSED = re.compile(r'sluice_requests_total\{outcome="refused",reason="([^"]*)"\} (\S+)')


@dataclass
class SluiceProc:
    """A Sluice child with its ports."""

    proc: Child
    port: int
    admin: int

    def command(self, doc: dict[str, Any]) -> dict[str, Any]:
        """POST /mode on the admin listener with the bearer token."""
        status, body = http_call(
            self.admin,
            "POST",
            "/mode",
            orjson.dumps(doc),
            {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        if status != 200:
            raise RuntimeError(f"POST /mode {doc} -> {status} {body[:200]!r}")
        result: dict[str, Any] = orjson.loads(body)
        return result

    def status(self) -> dict[str, Any]:
        """The admin /status document."""
        _, body = http_call(self.admin, "GET", "/status")
        result: dict[str, Any] = orjson.loads(body)
        return result

    def own_answers(self) -> dict[str, int]:
        """Answers Sluice made itself so far, by reason (`sluice_requests_total{outcome=
        "refused"}`)."""
        _, body = http_call(self.admin, "GET", "/metrics")
        out: dict[str, int] = {}
        for line in body.decode().splitlines():
            m = _REFUSED.match(line)
            if m and float(m.group(2)):
                out[m.group(1)] = int(float(m.group(2)))
        return out

    def queue_depth(self) -> float:
        """Sum of the `sluice_queue_depth` gauges (all priorities)."""
        _, body = http_call(self.admin, "GET", "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("sluice_queue_depth{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_sluice(
    group: ProcessGroup,
    name: str,
    backend: int,
    client: str,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> SluiceProc:
    """Sluice on PROXY_CORE with the admin token in SLUICE_ADMIN_TOKEN: the default config
    (config/sluice.yaml's keys) on bench ports with `upstream.client` set and quiet logs (every
    admission setting keeps its default), then `extra` section by section."""
    port, admin = free_port(), free_port()
    overrides = merge_sections(
        {"upstream": {"client": client}, "logging": {"level": "warning"}}, extra or {}
    )
    path = write_sluice_config(
        group.log_dir / f"{name}.yaml",
        port=port,
        upstream_port=backend,
        admin_port=admin,
        overrides=overrides,
    )
    argv = [sys.executable, "-m", "proxy", "--config", str(path)]
    proc = start_pinned(group, name, argv, PROXY_CORE, {"SLUICE_ADMIN_TOKEN": ADMIN_TOKEN})
    return SluiceProc(proc, port, admin)


def run_floor_server(kind: str, port: int, backend: int) -> None:
    """A floor row: aiohttp + uvloop answering a constant refusal, or forwarding through the
    lean pool with nothing else (no classify, gate, forwarded headers or metrics)."""
    import uvloop
    from aiohttp import web

    from proxy.config import UpstreamConfig
    from proxy.headers import strip_hop_by_hop
    from proxy.upstream import UpstreamClient, UpstreamRequest, make_upstream

    refusal = b'{"reason":"shield","message":"traffic is removed while the backend is repaired"}'
    refusal_headers = {"Content-Type": "application/json", "x-sluice-reason": "shield"}
    clients: list[UpstreamClient] = []

    async def static(request: web.Request) -> web.Response:
        return web.Response(status=503, body=refusal, headers=refusal_headers)

    async def forward(request: web.Request) -> web.Response:
        up = await clients[0].send(
            UpstreamRequest(
                request.method, request.raw_path, strip_hop_by_hop(request.headers), None, 30.0
            )
        )
        try:
            parts = []
            while chunk := await up.read_chunk():
                parts.append(chunk)
        finally:
            up.release()
        headers = strip_hop_by_hop(up.headers)
        headers.popall("content-length", None)
        return web.Response(
            status=up.status, reason=up.reason, body=b"".join(parts), headers=headers
        )

    async def main() -> None:
        clients.append(
            make_upstream(UpstreamConfig(url=f"http://127.0.0.1:{backend}", client="lean"))
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", static if kind == "aiohttp-static" else forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def run_slow_backend(port: int) -> None:
    """aiohttp backend: /healthz at once (probes stay good), everything else sleeps 10 min."""
    import uvloop
    from aiohttp import web

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(600)
        return web.Response(text=BODY, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_route("*", "/{tail:.*}", slow)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def gate_available() -> bool:
    """The admission engine (proxy/admission/gate.py) is importable."""
    try:
        import proxy.admission.gate  # noqa: F401
    except ImportError:
        return False
    return True
