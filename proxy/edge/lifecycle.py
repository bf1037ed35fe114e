"""Start-up and shutdown in a fixed order; SIGHUP reloads, SIGTERM/SIGINT drain.

Start: raise the open-file limit, open the upstream pool, start the gate, bind the proxy and
admin listeners. Stop, all within `lifecycle.drain_timeout` of SIGTERM: /readyz turns 503 while
the listener still accepts and serves for `drain_grace` (load balancers notice before anything is
refused); then queued requests are answered `draining`, the listener and idle connections close,
in-flight requests finish until the deadline, what still runs is cut (proxy.edge.drain), and
the upstream pool and the admin listener close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import Config, ConfigError, load_config
from ..logs import set_level
from .admin import Admin, build_admin_app, load_admin_token
from .app import ReloadRefused, Sluice, build_proxy_server
from .gcpacing import (
    INCREMENTAL_GC,
    give_back_full_collections,
    run_full_collections,
    take_over_full_collections,
)
from .guard import Guard, GuardedServer

log = logging.getLogger("sluice.lifecycle")

# Exit is promised within drain_timeout + 0.5 s. After the deadline the cut requests' answers get
# CUT_WRITE s to be written, then closing the listeners, the gate and the pool gets TEARDOWN s.
CUT_WRITE = 0.1
TEARDOWN = 0.25
# aiohttp's wait per connection when a runner closes (twice: before and after it cancels): the
# drain has already waited, so this only bounds a client slow to read its last answer.
CLOSE_WAIT = 0.05


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard limit; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def _bound_port(runner: web.BaseRunner) -> int:
    addrs = runner.addresses
    return int(addrs[0][1]) if addrs else 0


@dataclass
class Server:
    """A running Sluice: listeners, the app, and the event that stops it."""

    config_path: Path | None
    sluice: Sluice
    proxy_runner: web.BaseRunner
    admin_runner: web.AppRunner
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stop_at: float | None = None  # time.monotonic() of the stop request: the drain's clock

    @property
    def proxy_port(self) -> int:
        """The proxy listener's bound port (useful with port 0)."""
        return _bound_port(self.proxy_runner)

    @property
    def admin_port(self) -> int:
        """The admin listener's bound port."""
        return _bound_port(self.admin_runner)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file; an invalid or refused one leaves the old config running."""
        async with self.reload_lock:
            metrics = self.sluice.metrics
            if self.config_path is None:
                return {"ok": False, "error": "no config file to reload"}
            try:
                new = await asyncio.get_running_loop().run_in_executor(
                    None, load_config, self.config_path
                )
                self.sluice.reload(new)
            except ConfigError as exc:
                metrics.reload_failed.inc()
                errors = [str(e) for e in exc.errors]
                log.error(
                    "config reload failed; keeping the old config",
                    extra={"file": str(self.config_path), "errors": errors},
                )
                return {"ok": False, "errors": errors}
            except ReloadRefused as exc:
                metrics.reload_refused.inc()
                log.error(
                    "config reload refused; keeping the old config",
                    extra={"file": str(self.config_path), "error": str(exc)},
                )
                return {"ok": False, "errors": [str(exc)]}
            metrics.reload_ok.inc()
            generation = self.sluice.snapshot.generation
            log.info("config reloaded", extra={"generation": generation})
            for note in new.deprecations:
                log.warning(note, extra={"file": str(self.config_path)})
            if new.deprecations:
                return {"ok": True, "generation": generation, "warnings": list(new.deprecations)}
            return {"ok": True, "generation": generation}

    def request_stop(self) -> None:
        """Begin the graceful drain (what SIGTERM does); `drain_timeout` counts from now."""
        if self.stop_at is None:
            self.stop_at = time.monotonic()
        self.stop_event.set()

    async def shutdown(self) -> None:
        """The ordered drain, over `drain_timeout` after the stop request (or after this call):
        not ready but serving for the grace; then the queue answered `draining` and the
        listener closed; in-flight requests finish until the deadline, the rest are cut;
        last the upstream pool and the admin listener close."""
        started = self.stop_at if self.stop_at is not None else time.monotonic()
        lifecycle = self.sluice.snapshot.config.lifecycle
        deadline = started + lifecycle.drain_timeout
        sluice = self.sluice
        sluice.begin_drain()
        log.info(
            "draining",
            extra={
                "in_flight": sluice.in_flight,
                "drain_timeout_s": lifecycle.drain_timeout,
                "drain_grace_s": lifecycle.grace,
            },
        )
        await _sleep_until(started + lifecycle.grace)
        await sluice.drain()
        await self._close_listener()
        log.info("listener closed", extra={"in_flight": sluice.in_flight})
        await sluice.cutoff.wait_idle(deadline)
        cut = await sluice.cutoff.cut(CUT_WRITE) if sluice.cutoff.running else 0
        try:
            async with asyncio.timeout(TEARDOWN):
                await self.proxy_runner.cleanup()
                await sluice.close()
                await self.admin_runner.cleanup()
        except TimeoutError:
            log.warning("closing took longer than allowed; exiting without waiting")
        log.info("stopped", extra={"cut": cut, "took_s": round(time.monotonic() - started, 3)})

    async def _close_listener(self) -> None:
        """Stop accepting; idle keep-alive connections close now, busy ones after their answer."""
        for site in self.proxy_runner.sites:
            await site.stop()
        server = self.proxy_runner.server
        if server is not None:
            server.pre_shutdown()


async def _sleep_until(when: float) -> None:
    """Sleep until time.monotonic() reads `when` (at once if it has)."""
    left = when - time.monotonic()
    if left > 0:
        await asyncio.sleep(left)


async def start_server(config: Config, config_path: Path | None = None) -> Server:
    """Bind both listeners and start serving; the caller awaits `stop_event` then `shutdown`."""
    token = load_admin_token(config.admin)  # TokenError propagates: refuse to start
    sluice = Sluice(config)
    await sluice.start()
    listen = config.listen
    guard = Guard(lambda: sluice.snapshot.config.listen, sluice.metrics)
    proxy_server = GuardedServer(  # header-read timer, JSON answers to bad input
        build_proxy_server(
            sluice,
            config,
            access_log=None,
            handler_cancellation=True,
            auto_decompress=False,  # bytes and Content-Encoding pass untouched
            keepalive_timeout=listen.keepalive_timeout,
            max_line_size=listen.max_line_size,
            max_field_size=listen.max_field_size,
            max_headers=listen.max_headers,
        ),
        guard,
    )
    proxy_runner = web.ServerRunner(proxy_server, handle_signals=False, shutdown_timeout=CLOSE_WAIT)
    await proxy_runner.setup()
    await web.TCPSite(
        proxy_runner, listen.host, listen.port, backlog=listen.backlog, reuse_address=True
    ).start()

    server_holder: list[Server] = []

    async def do_reload() -> dict[str, Any]:
        return await server_holder[0].reload()

    admin = Admin(
        sluice.metrics,
        token,
        sluice.status,
        do_reload,
        sluice.gate.command,
        lambda: sluice.draining,
    )
    admin_runner = web.AppRunner(
        build_admin_app(admin), handle_signals=False, access_log=None, shutdown_timeout=CLOSE_WAIT
    )
    await admin_runner.setup()
    await web.TCPSite(admin_runner, config.admin.host, config.admin.port).start()
    server = Server(config_path, sluice, proxy_runner, admin_runner)
    server_holder.append(server)
    log.info(
        "listening",
        extra={
            "proxy": f"{listen.host}:{server.proxy_port}",
            "admin": f"{config.admin.host}:{server.admin_port}",
            "upstream": config.upstream.url,
            "protection": config.modes.protection,
            "admin_token": "set" if token else "none (mutating admin calls refused)",
        },
    )
    return server


def install_signals(server: Server) -> Callable[[], None]:
    """SIGHUP → reload, SIGTERM/SIGINT → drain. Returns a function that removes them."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        log.info("SIGHUP: reloading config")
        task = loop.create_task(server.reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    def on_term(signame: str) -> None:
        log.info("signal received: draining", extra={"signal": signame})
        server.request_stop()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, on_term, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_term, "SIGINT")

    def remove() -> None:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return remove


async def run(config: Config, config_path: Path | None) -> int:
    """Run until SIGTERM/SIGINT, then drain. Returns the process exit code."""
    if config.lifecycle.raise_nofile:
        before, after = raise_nofile_limit()
        log.info("open-file limit", extra={"before": before, "after": after})
    set_level(config.logging.level)
    server = await start_server(config, config_path)
    remove = install_signals(server)
    gc_task: asyncio.Task[None] | None = None
    thresholds = None
    if config.lifecycle.gc_pacing:
        # After start-up, so what start-up built is frozen with it (see proxy.edge.gcpacing).
        thresholds = take_over_full_collections()
        sluice = server.sluice

        def gc_settings() -> tuple[float, float]:
            lc = sluice.snapshot.config.lifecycle
            return lc.gc_full_interval, lc.gc_full_max_deferral

        if not INCREMENTAL_GC:  # 3.14+ collects in bounded increments on its own
            gc_task = asyncio.create_task(run_full_collections(sluice.calm, gc_settings))
    try:
        await server.stop_event.wait()
    finally:
        remove()
        if gc_task is not None:
            gc_task.cancel()
        if thresholds is not None:
            give_back_full_collections(thresholds)
        await server.shutdown()
        skip_collection_at_exit()
    return 0


def skip_collection_at_exit() -> None:
    """The process is about to exit: freeze the heap so the interpreter's last full collection
    has nothing to walk. It frees nothing the exit would not, and took 0.25-0.45 s after the
    drain on a loaded 2-core machine (loadtest/bench_shutdown.py), past the promise of an exit
    within drain_timeout + 0.5 s."""
    gc.disable()
    gc.freeze()
