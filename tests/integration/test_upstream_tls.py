"""TLS to the upstream (`upstream.tls`), on both clients, against local TLS backends whose CA
and certificates the tests make at run time (tests/tls_certs.py): a trusted and an unknown
CA, verification off, a client certificate the backend requires, a server-name override.

The backends are aiohttp apps with an ssl context. They do not send TLS alerts when they
refuse a handshake (asyncio resets the connection), so where the alert itself is the point,
the backend is `openssl s_server`, which sends them as production servers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.config import load_config_data
from proxy.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamResponse,
    make_upstream,
)
from tests.support import free_port, running_sluice, sluice_config, wait_for
from tests.tls_certs import CertAuthority, Issued


@dataclass(frozen=True)
class Pki:
    """Every certificate the tests use, made once per module."""

    ca: CertAuthority  # signs the backends' certificates
    stranger: CertAuthority  # a CA nobody trusts
    clients_ca: CertAuthority  # signs the client certificates backends accept
    server: Issued  # for localhost and 127.0.0.1
    named: Issued  # for backend.test only: reachable by IP with a server-name override
    client: Issued
    unknown_server: Issued  # for localhost, signed by the stranger


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, stranger, clients_ca = (CertAuthority(d, n) for n in ("backend", "stranger", "clients"))
    return Pki(
        ca=ca,
        stranger=stranger,
        clients_ca=clients_ca,
        server=ca.issue("server", dns=("localhost",), ips=("127.0.0.1",)),
        named=ca.issue("named", dns=("backend.test",)),
        client=clients_ca.issue("sluice-client", client=True),
        unknown_server=stranger.issue("unknown-server", dns=("localhost",), ips=("127.0.0.1",)),
    )


@pytest.fixture(params=["aiohttp", "lean"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the backend -------------------------------------------------------------------------------


@dataclass
class TlsBackend:
    """An aiohttp app over TLS; records the SNI of each handshake and each request's client
    certificate subject."""

    port: int = 0
    server_names: list[str | None] = field(default_factory=list)
    client_subjects: list[str | None] = field(default_factory=list)

    async def secure(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]).get("commonName") if peer else None
        self.client_subjects.append(subject)
        return web.Response(text="secure")

    def sni(self, sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)


@contextlib.asynccontextmanager
async def tls_backend(served: Issued, clients_ca: Path | None = None) -> AsyncIterator[TlsBackend]:
    """A TLS backend presenting `served`; with `clients_ca`, it requires a client
    certificate that CA signed."""
    backend = TlsBackend()
    app = web.Application()
    app.router.add_get("/", backend.secure)
    app.router.add_get("/healthz", backend.secure)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(served.cert, served.key)
    ctx.sni_callback = backend.sni
    if clients_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(clients_ca)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    backend.port = int(runner.addresses[0][1])
    try:
        yield backend
    finally:
        await runner.cleanup()


# -- through Sluice ----------------------------------------------------------------------------


async def through_sluice(kind: str, url: str, tls: dict[str, Any]) -> tuple[int, str, str]:
    """One GET / through an in-process Sluice: status, x-sluice-reason, body."""
    config = sluice_config(url, upstream={"client": kind, "tls": tls}, modes={"protection": "off"})
    async with (
        running_sluice(config) as server,
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.proxy_port}/") as resp,
    ):
        return resp.status, resp.headers.get("x-sluice-reason", ""), await resp.text()


async def test_a_backend_signed_by_the_configured_ca_answers_through_sluice(
    kind: str, pki: Pki
) -> None:
    async with tls_backend(pki.server) as backend:
        url = f"https://localhost:{backend.port}"
        status, _, body = await through_sluice(kind, url, {"ca_file": str(pki.ca.cert)})
    assert (status, body) == (200, "secure")
    assert "localhost" in backend.server_names  # SNI: the url's host


async def test_a_backend_signed_by_an_unknown_ca_is_a_502_upstream_connect(
    kind: str, pki: Pki
) -> None:
    async with tls_backend(pki.unknown_server) as backend:
        url = f"https://localhost:{backend.port}"
        status, reason, _ = await through_sluice(kind, url, {"ca_file": str(pki.ca.cert)})
    assert (status, reason) == (502, "upstream-connect")
    assert backend.client_subjects == []  # no request got through


async def test_verify_off_accepts_any_certificate_and_warns_at_start(
    kind: str, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sluice.upstream")
    async with tls_backend(pki.unknown_server) as backend:
        url = f"https://localhost:{backend.port}"
        status, _, body = await through_sluice(kind, url, {"verify": False})
    assert (status, body) == (200, "secure")
    warnings = [r for r in caplog.records if r.name == "sluice.upstream"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "verification is off" in warnings[0].getMessage()


async def test_verify_on_does_not_warn(
    kind: str, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sluice.upstream")
    async with tls_backend(pki.server) as backend:
        url = f"https://localhost:{backend.port}"
        status, _, _ = await through_sluice(kind, url, {"ca_file": str(pki.ca.cert)})
    assert status == 200
    assert [r for r in caplog.records if r.name == "sluice.upstream"] == []


async def test_a_client_certificate_the_backend_requires_is_presented(kind: str, pki: Pki) -> None:
    tls = {
        "ca_file": str(pki.ca.cert),
        "cert_file": str(pki.client.cert),
        "key_file": str(pki.client.key),
    }
    async with tls_backend(pki.server, clients_ca=pki.clients_ca.cert) as backend:
        status, _, body = await through_sluice(kind, f"https://localhost:{backend.port}", tls)
    assert (status, body) == (200, "secure")
    assert backend.client_subjects == ["sluice-client"]


async def test_without_the_client_certificate_the_backend_refuses(kind: str, pki: Pki) -> None:
    async with tls_backend(pki.server, clients_ca=pki.clients_ca.cert) as backend:
        url = f"https://localhost:{backend.port}"
        status, reason, _ = await through_sluice(kind, url, {"ca_file": str(pki.ca.cert)})
    # Which of the two depends on the TLS version: 1.2 refuses in the handshake, 1.3 after it
    # (and asyncio's server resets instead of sending the alert: see the s_server tests).
    assert (status, reason) in ((502, "upstream-connect"), (502, "upstream-error"))
    assert backend.client_subjects == []


async def test_server_name_overrides_sni_and_the_name_checked(kind: str, pki: Pki) -> None:
    tls = {"ca_file": str(pki.ca.cert), "server_name": "backend.test"}
    async with tls_backend(pki.named) as backend:
        url = f"https://127.0.0.1:{backend.port}"  # the certificate does not name this
        without = await through_sluice(kind, url, {"ca_file": str(pki.ca.cert)})
        status, _, body = await through_sluice(kind, url, tls)
    assert without[:2] == (502, "upstream-connect")
    assert (status, body) == (200, "secure")
    assert backend.server_names[-1] == "backend.test"


# -- the clients alone: the cause each failure names -------------------------------------------


@contextlib.asynccontextmanager
async def client_for(
    kind: str, url: str, tls: dict[str, Any], **upstream: Any
) -> AsyncIterator[UpstreamClient]:
    config = load_config_data({"upstream": {"url": url, "client": kind, "tls": tls, **upstream}})
    client = make_upstream(config.upstream)
    try:
        yield client
    finally:
        await client.close()


async def get(client: UpstreamClient) -> UpstreamResponse:
    resp = await client.send(UpstreamRequest("GET", "/", CIMultiDict(), None, 5.0))
    resp.release()
    return resp


async def test_an_unknown_ca_names_the_verification_failure(kind: str, pki: Pki) -> None:
    async with tls_backend(pki.unknown_server) as backend:
        url = f"https://localhost:{backend.port}"
        async with client_for(kind, url, {"ca_file": str(pki.ca.cert)}) as client:
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await get(client)


async def test_a_name_mismatch_names_the_host(kind: str, pki: Pki) -> None:
    async with tls_backend(pki.named) as backend:
        url = f"https://127.0.0.1:{backend.port}"
        async with client_for(kind, url, {"ca_file": str(pki.ca.cert)}) as client:
            with pytest.raises(UpstreamConnectError, match=r"(?i)ip address mismatch"):
                await get(client)


async def test_the_default_trust_store_does_not_trust_a_private_ca(kind: str, pki: Pki) -> None:
    async with tls_backend(pki.server) as backend:
        url = f"https://localhost:{backend.port}"
        async with client_for(kind, url, {}) as client:
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await get(client)


def test_without_ca_file_the_system_store_is_used(kind: str, pki: Pki) -> None:
    """In a subprocess, so the system store (SSL_CERT_FILE) is read as at start-up."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.integration import test_upstream_tls as t
        from tests.tls_certs import Issued

        async def main():
            served = Issued(t.Path({str(pki.server.cert)!r}), t.Path({str(pki.server.key)!r}))
            async with t.tls_backend(served) as backend:
                url = f"https://localhost:{{backend.port}}"
                async with t.client_for({kind!r}, url, {{}}) as client:
                    print((await t.get(client)).status)

        asyncio.run(main())
        """
    )
    env = dict(os.environ, SSL_CERT_FILE=str(pki.ca.cert))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "200", out.stderr


async def test_a_backend_that_never_completes_the_handshake_is_a_connect_timeout(
    kind: str, pki: Pki
) -> None:
    hung_up: list[bool] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # accepts the connection, never answers the ClientHello
            hung_up.append(True)  # the client gave up and closed its socket
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}"
    try:
        async with client_for(
            kind, url, {"ca_file": str(pki.ca.cert)}, connect_timeout="200ms"
        ) as client:
            with pytest.raises(UpstreamConnectError, match="connect timeout"):
                await get(client)
        await wait_for(lambda: hung_up)
    finally:
        server.close()


@contextlib.contextmanager
def s_server(pki: Pki, version: str) -> Iterator[int]:
    """`openssl s_server` requiring a client certificate, sending the alerts real servers send."""
    port = free_port()
    args = ["openssl", "s_server", "-accept", str(port), "-www", version]
    args += ["-cert", str(pki.server.cert), "-key", str(pki.server.key)]
    args += ["-CAfile", str(pki.clients_ca.cert), "-Verify", "1", "-verify_return_error"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break  # this probe is not TLS: s_server drops it and serves the next one
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("version", "alert"),
    [("-tls1_3", "CERTIFICATE_REQUIRED"), ("-tls1_2", "HANDSHAKE_FAILURE")],
    ids=["tls1.3", "tls1.2"],
)
async def test_a_refused_client_certificate_is_a_connect_error_naming_the_alert(
    kind: str, pki: Pki, version: str, alert: str
) -> None:
    with s_server(pki, version) as port:
        url = f"https://localhost:{port}"
        async with client_for(kind, url, {"ca_file": str(pki.ca.cert)}) as client:
            with pytest.raises(UpstreamConnectError, match=f"TLS handshake failed.*{alert}"):
                await get(client)


# -- the lean client on uvloop (the loop Sluice runs on: its own TLS implementation) -----------


@pytest.mark.parametrize(
    "scenario",
    ["trusted", "unknown-ca", "client-cert", "server-name"],
)
def test_lean_tls_on_uvloop(pki: Pki, scenario: str) -> None:
    import uvloop

    scenarios = {
        "trusted": lambda: test_a_backend_signed_by_the_configured_ca_answers_through_sluice(
            "lean", pki
        ),
        "unknown-ca": lambda: test_an_unknown_ca_names_the_verification_failure("lean", pki),
        "client-cert": lambda: test_a_client_certificate_the_backend_requires_is_presented(
            "lean", pki
        ),
        "server-name": lambda: test_server_name_overrides_sni_and_the_name_checked("lean", pki),
    }
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenarios[scenario]())
