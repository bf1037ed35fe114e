"""Builds the proxy application: the request handler (classify → gate → forward), the shared
upstream client, the gate, and config snapshots swapped atomically on reload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion11
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from ..admission.classify import Classifier, new_request_id
from ..admission.passthrough import PassThroughGate
from ..config import Config, LoggingConfig
from ..contracts import Gate, Outcome, Reason, Refusal, Ticket
from ..headers import TrustedSources
from ..logs import set_level
from ..ops.metrics import Metrics
from ..reload_rules import reload_refusal
from ..upstream import UpstreamClient, UpstreamError, UpstreamRequest, make_upstream
from .accesslog import AccessLog, UpstreamFailureLog
from .arrival import ArrivalClock
from .drain import Cutoff
from .forward import SERVER, Forwarder, refusal_response
from .guard import CountingInvalidHeaders, CountingRetrySignals, LoggingServer

if TYPE_CHECKING:
    from ..fleet.link import FleetLink

log = logging.getLogger("sluice.app")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request needs from the config, fixed for the request's whole life."""

    config: Config
    classifier: Classifier
    trusted: TrustedSources
    generation: int


def make_gate(config: Config, metrics: Metrics, caller_names: list[str]) -> Gate:
    """The admission gate for `modes.protection` (pass-through when protection is off)."""
    if config.modes.protection == "off":
        return PassThroughGate(config, metrics)
    from ..admission.gate import AdmissionGate

    return AdmissionGate(config, metrics, caller_names)


class ReloadRefused(Exception):
    """A reload was refused; the message says why and the old config stays in force."""


class Sluice:
    """One proxy process: snapshot, gate, upstream client, metrics and the request handler."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics(c.name for c in config.callers.known)
        # One counter for every classifier, so `sluice_invalid_headers` survives reloads.
        self.invalid_headers = CountingInvalidHeaders(self.metrics)
        self.retry_signals = CountingRetrySignals(self.metrics)
        classifier = Classifier(config)
        classifier.invalid_headers = self.invalid_headers
        classifier.retry_signals = self.retry_signals
        self.snapshot = Snapshot(config, classifier, classifier.trusted, 1)
        self.metrics.config_info.set(1)
        self.gate: Gate = make_gate(config, self.metrics, classifier.caller_names())
        self.access = AccessLog(self._logging, lambda: self.gate.mode_name)
        self.failures = UpstreamFailureLog(self._logging)
        self.client: UpstreamClient | None = None
        self.forwarder: Forwarder | None = None
        self.draining = False  # from SIGTERM on: /readyz 503, answers close their connection
        self.cutoff = Cutoff(self.metrics)  # what the drain cuts at its deadline
        self.in_flight = 0
        self.holding = 0  # refusals held before they are sent (`_hold`)
        # Requests are stamped with when they may have arrived, not when the loop got to them.
        self.arrivals = ArrivalClock()
        # The gauge reads the plain counter at scrape time: no locked inc/dec per request.
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.metrics.holding.set_function(lambda: self.holding)
        # The fleet link (`fleet.redis`): None standalone, where nothing of it is imported.
        self.fleet: FleetLink | None = None
        if config.fleet.redis is not None:
            from .fleet import join_fleet

            self.fleet = join_fleet(self)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the upstream pool and start the gate's background work (inside the loop)."""
        self.client = make_upstream(self.snapshot.config.upstream)
        self.arrivals.start()
        self.forwarder = Forwarder(
            self.client, self.metrics, self.gate, self.failures, self.arrivals
        )
        await self.gate.start(self.probe)
        if self.fleet is not None:
            await self.fleet.start()

    def begin_drain(self) -> None:
        """Not ready from now on (/readyz 503); requests are still served, each answer
        closing its connection so clients move before the listener closes."""
        self.draining = True

    async def drain(self) -> None:
        """Refuse new work and answer everything queued with `draining`."""
        self.draining = True
        await self.gate.drain()

    async def close(self) -> None:
        """Stop the gate and close the upstream pool."""
        self.arrivals.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        await self.gate.stop()
        if self.forwarder is not None:
            await self.forwarder.close()
        if self.client is not None:
            await self.client.close()

    async def probe(self) -> bool:
        """One active health probe of the upstream (its health path answers below 500)."""
        if self.client is None:
            return False
        cfg = self.snapshot.config.upstream
        request = UpstreamRequest("GET", cfg.health_path, _probe_headers(cfg.url), None, 0)
        request.timeout = cfg.probe_timeout
        try:
            resp = await self.client.send(request)
            try:
                while await resp.read_chunk():
                    pass
            finally:
                resp.release()
        except UpstreamError as exc:
            self.metrics.probe_failed.inc()
            self.failures.failed(exc, None, "probe")
            return False
        ok = resp.status < 500
        (self.metrics.probe_ok if ok else self.metrics.probe_failed).inc()
        return ok

    def reload(self, new: Config) -> None:
        """Swap in a validated config; raise ReloadRefused if it needs a restart
        (proxy/reload_rules.py)."""
        why = reload_refusal(self.snapshot.config, new)
        if why is not None:
            raise ReloadRefused(why)
        classifier = Classifier(new, self.snapshot.classifier.memory)
        classifier.invalid_headers = self.invalid_headers
        classifier.retry_signals = self.retry_signals
        if self.fleet is not None:  # a new cache size makes a new memory: keep it journalled
            classifier.memory.set_journal(self.fleet.journal)
        self.gate.reconfigure(new)
        self.snapshot = Snapshot(new, classifier, classifier.trusted, self.snapshot.generation + 1)
        self.metrics.config_info.set(self.snapshot.generation)
        set_level(new.logging.level)

    def _logging(self) -> LoggingConfig:
        return self.snapshot.config.logging

    def calm(self) -> bool:
        """No surge in hand: the gate is calm (NORMAL, not draining) and so is this process."""
        return not self.draining and self.gate.calm()

    def status(self) -> dict[str, Any]:
        """The JSON document behind the admin `/status`."""
        doc = dict(self.gate.status())
        doc["config_generation"] = self.snapshot.generation
        doc["draining"] = self.draining
        doc["requests_in_progress"] = self.in_flight
        if self.client is not None:
            doc["upstream"] = self.client.stats()
            if self.forwarder is not None:
                # Answered at their deadline, the backend's answer still awaited (slot held).
                doc["upstream"]["lingering"] = len(self.forwarder.lingering)
        if self.fleet is not None:
            from .fleet import status

            doc["fleet"] = status(self.fleet, self, time.monotonic())
        return doc

    # --- the request path -----------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """classify → gate → forward; every admitted ticket is released exactly once, and
        every answer goes to the access log."""
        snap = self.snapshot
        config = snap.config
        if request.headers.get("Expect"):
            # What aiohttp's Application did before its handler (the proxy is served by the
            # low-level web.Server): `100 Continue` now, 417 for any other expectation.
            await _expect(request)
        peer = _peer(request)
        if config.listen.expose_metrics and request.path == "/metrics":
            return self._metrics()
        limit = config.listen.max_body_size
        if limit and (request.content_length or 0) > limit:
            return self._too_large(request, peer)
        now = time.monotonic()
        ticket = self._classify(request, peer, now)
        decision = self.gate.admit(ticket)
        waited = 0.0
        if decision is not None and not isinstance(decision, Refusal):
            try:
                decision = await decision.wait()
            except asyncio.CancelledError:  # its client left while it waited
                snap.classifier.note_failure(ticket, ticket.arrived)
                raise
            waited = time.monotonic() - now
        if decision is not None:
            snap.classifier.note_failure(ticket, ticket.arrived)
            if decision.hold > 0.0:
                decision = await self._hold(decision, config, request, ticket)
            answer = self._refusal(decision, ticket)
            self.access.answer(request, peer, answer, ticket, None, waited)
            return answer

        assert self.forwarder is not None
        outcome = Outcome(None, 0.0, "cancelled")
        task = self.cutoff.enter()  # what the drain cuts if it still runs at the deadline
        self.in_flight += 1
        try:
            resp = await self.forwarder.forward(
                request, ticket, outcome, config, snap.trusted, peer
            )
        except asyncio.CancelledError:  # its client left, or the drain's deadline came
            resp = self.cutoff.answer(request, ticket, config.shedding.retry_after_unbooked)
        finally:
            self.cutoff.running.discard(task)
            self.in_flight -= 1
            if not outcome.held:  # (else the forwarder releases it with the late answer)
                self.gate.release(ticket, outcome)
            if not outcome.good:
                snap.classifier.note_failure(ticket, ticket.arrived)
        if self.draining and not resp.prepared:
            resp.force_close()  # `Connection: close`: the client moves before the listener closes
        self.access.answer(request, peer, resp, ticket, outcome, waited)
        return resp

    def _classify(self, request: web.BaseRequest, peer: str, now: float) -> Ticket:
        """The request's Ticket, stamped with when it may have arrived (`arrival.py`)."""
        arrived = self.arrivals.earliest(now)
        return self.snapshot.classifier.classify(
            peer,
            request.method,
            request.raw_path,
            request.headers,
            arrived,
            (time.time() - (now - arrived)) * 1000.0,  # the wall clock at `arrived`
        )

    def _metrics(self) -> web.Response:
        """`/metrics` on the proxy listener (`listen.expose_metrics`)."""
        from .admin import metrics_response

        resp = metrics_response(self.metrics)
        resp.headers["Server"] = SERVER
        return resp

    def _too_large(self, request: web.BaseRequest, peer: str) -> web.Response:
        """413 for a declared body over `listen.max_body_size`, before any accounting."""
        self.metrics.refused[Reason.BAD_REQUEST].inc()
        request_id = request.headers.get(self.snapshot.config.headers.request_id)
        resp = refusal_response(Refusal(Reason.BAD_REQUEST, 413, 0), request_id or new_request_id())
        self.access.answer(request, peer, resp)
        return resp

    async def _hold(
        self, refusal: Refusal, config: Config, request: web.BaseRequest, ticket: Ticket
    ) -> Refusal:
        """Hold a refusal for `refusal.hold` seconds, then answer it. Past
        `queue.max_size` refusals held at once, or while draining, it is answered now, with
        the hold added to its Retry-After (memory stays bounded whatever the storm); a hold
        the drain's deadline cuts short is answered the same way."""
        if self.holding >= config.queue.max_size or self.draining:
            ms = refusal.retry_after_ms + math.ceil(refusal.hold * 1000.0)
            return Refusal(refusal.reason, refusal.status, ms)
        self.holding += 1
        self.metrics.held.inc()
        task = self.cutoff.enter()
        until = time.monotonic() + refusal.hold
        try:
            await asyncio.sleep(refusal.hold)
        except asyncio.CancelledError:
            if not self.cutoff.cutting:
                raise
            left = until - time.monotonic()
            return self.cutoff.held_answer(request, ticket, refusal, left)
        finally:
            self.cutoff.running.discard(task)
            self.holding -= 1
        return refusal

    def _refusal(self, refusal: Refusal, ticket: Ticket) -> web.Response:
        """The answer for a refusal (closing its connection once draining)."""
        self.metrics.refused[refusal.reason].inc()
        resp = refusal_response(refusal, ticket.request_id)
        if self.draining:
            resp.force_close()
        return resp


async def _expect(request: web.BaseRequest) -> None:
    """aiohttp's default `Expect` handling (web_urldispatcher._default_expect_handler)."""
    if request.version == HttpVersion11:
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(
                text=f"Unknown Expect: {request.headers['Expect']}", headers={"Server": SERVER}
            )
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the main answer has not started yet
    await request.writer.drain()


def _peer(request: web.BaseRequest) -> str:
    transport = request.transport
    if transport is not None:
        info = transport.get_extra_info("peername")
        if info:
            return str(info[0])
    return "unknown"


def _probe_headers(url: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Host"] = urlsplit(url).netloc
    headers["User-Agent"] = "sluice-probe"
    return headers


def build_proxy_server(sluice: Sluice, config: Config, **kwargs: Any) -> LoggingServer:
    """The client-facing low-level aiohttp server: every request goes to `Sluice.handle`,
    and the guard wrapped around it logs its own answers to `sluice.access`.

    No Application, router or middlewares: per request they cost a router match, a
    `get_event_loop()` (a getpid syscall on Python 3.11) and the Expect check, which
    `Sluice.handle` does itself. Must be called inside the running loop.
    """
    loop = asyncio.get_running_loop()
    max_size = config.listen.max_body_size or 2**63

    def make_request(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=max_size
        )

    return LoggingServer(
        sluice.handle, sluice.access, request_factory=make_request, loop=loop, **kwargs
    )
