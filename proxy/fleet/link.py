"""The fleet link: one exchange with Redis per tick, as its own task (the one I/O module of
`proxy/fleet/`, imported only when `fleet.redis` is configured).

Each tick, one pipelined round trip: append this sidecar's batch to the fleet's stream, write
its peer record (mode hint included), read the peers' stream entries since the last read and
the peers hash; then merge what came in (`exchange`). Never on a request's path: requests read
only the local memories. An exchange is bounded by `fleet.op_timeout` (plus `connect_timeout`
when it must connect); a slow one is abandoned, and ticks missed meanwhile are skipped, not
queued. Redis down, slow or restarting: the link logs once that it dropped (with the cause),
counts every failed exchange, sets `sluice_fleet_redis_up` to 0, retries with a doubling
backoff (one tick up to `BACKOFF_MAX`), and logs once when it rejoins. Local state goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import Config
from .exchange import READ_COUNT, STREAM_MAXLEN, Exchange, Keys, lookback
from .journal import Journal
from .peers import PEER_FORGET

log = logging.getLogger("sluice.fleet")

BACKOFF_MAX = 1.0  # seconds between attempts while Redis is away, at most


class FleetLink:
    """Runs the exchange with Redis every tick; its state is read by /status and metrics."""

    def __init__(
        self,
        config: Config,
        exchange: Exchange,
        journal: Journal,
        mode: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        fleet = config.fleet
        assert fleet.redis is not None
        self.url = fleet.redis
        self.service = fleet.service
        self.instance = exchange.instance
        self.exchange = exchange
        self.journal = journal
        self.keys = Keys.of(config)
        self.tick = fleet.tick or config.recovery.batch_interval
        self.op_timeout = fleet.op_timeout
        self.connect_timeout = fleet.connect_timeout
        self.hint_ttl = fleet.hint_ttl
        self.lookback = lookback(config)
        self.ttl_ms = int(max(self.lookback, PEER_FORGET) * 2000)
        self._mode = mode
        self._clock = clock
        self._wall = wall
        self.up = False
        self.ok = 0  # exchanges that succeeded (counter)
        self.failed = 0  # exchanges that failed or timed out (counter)
        self.last_ok: float | None = None  # our clock at the last good exchange
        self.last_error = ""
        self._down_logged = False
        self._client: Redis | None = None
        self._last_id: str | None = None
        self._stale: Sequence[str] = ()
        self._retry_at = 0.0
        self._backoff = self.tick
        self._task: asyncio.Task[None] | None = None
        self.offset = wall() - clock()  # wall clock minus our clock, at the last attempt
        self.after: Callable[[float], None] | None = None  # called after every attempt

    @property
    def hint_mode(self) -> str | None:
        """The peers' strongest mode hint in force now (None: none)."""
        return self.exchange.view.hint(self._wall())[0]

    @property
    def running(self) -> bool:
        """The link's task exists (started and not stopped)."""
        return self._task is not None

    async def start(self) -> None:
        """Start exchanging in the running loop (the first exchange is one tick away)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sluice-fleet-link")

    async def stop(self) -> None:
        """Stop exchanging and close the connection (bounded: Redis may be gone)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_client()

    async def _run(self) -> None:
        due = self._clock()
        while True:
            due += self.tick
            delay = due - self._clock()
            if delay < 0:  # an exchange ran long: the ticks it covered are skipped, not queued
                due, delay = self._clock(), 0.0
            await asyncio.sleep(delay)
            try:
                await self.exchange_once()
                if self.after is not None:
                    self.after(self._clock())
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one round must not end the link
                log.exception("fleet exchange failed")

    async def exchange_once(self) -> bool:
        """One exchange (or none while backing off); True when it succeeded."""
        now = self._clock()
        if now < self._retry_at:
            self.journal.discard()  # stale by the time the link is back
            return False
        batch = self.journal.take()
        offset = self.offset = self._wall() - now
        payload = self.exchange.outgoing(batch, offset)
        record = self.exchange.record(now + offset, self._mode(), self.hint_ttl)
        budget = self.op_timeout + (self.connect_timeout if self._client is None else 0.0)
        try:
            async with asyncio.timeout(budget):
                entries, records = await self._round_trip(payload, record, now + offset)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis errors, OSError, timeouts: the link is down
            self.journal.dropped += len(batch)
            await self._failed(exc, now)
            return False
        now = self._clock()
        self.exchange.merge(entries, now, offset)
        self._stale = self.exchange.merge_peers(records, now, offset).stale
        self._joined(now)
        return True

    async def _round_trip(
        self, payload: bytes | None, record: bytes, wall: float
    ) -> tuple[list[tuple[str, bytes]], dict[bytes, bytes]]:
        if self._client is None:
            self._client = self._connect()
        keys = self.keys
        since = f"{int((wall - self.lookback) * 1000)}-0"
        if self._last_id is None or _id_ms(self._last_id) < _id_ms(since):
            self._last_id = since  # joining, or away longer than anything shared lives
        pipe = self._client.pipeline(transaction=False)
        if payload is not None:
            pipe.xadd(
                keys.events,
                {"i": self.instance, "d": payload},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        pipe.pexpire(keys.events, self.ttl_ms)
        pipe.hset(keys.peers, self.instance, record)
        if self._stale:
            pipe.hdel(keys.peers, *self._stale)
        pipe.pexpire(keys.peers, self.ttl_ms)
        pipe.xread({keys.events: self._last_id}, count=READ_COUNT)
        pipe.hgetall(keys.peers)
        replies = await pipe.execute()
        entries: list[tuple[str, bytes]] = []
        for _stream, items in replies[-2] or ():
            for entry_id, data in items:
                self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                who = data.get(b"i", b"")
                entries.append((who.decode("utf-8", "replace"), data.get(b"d", b"")))
        return entries, replies[-1] or {}

    def _connect(self) -> Redis:
        """A client that never retries on its own: the next tick is the retry."""
        client: Redis = Redis.from_url(
            self.url,
            socket_timeout=self.op_timeout,
            socket_connect_timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
            health_check_interval=0,
        )
        return client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.op_timeout):
                    await client.aclose()

    async def _failed(self, exc: BaseException, now: float) -> None:
        self.failed += 1
        self.last_error = _cause(exc)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, max(BACKOFF_MAX, self.tick))
        was_up, self.up = self.up, False
        self.exchange.forget_peers()
        await self._drop_client()  # a connection cut mid-reply is not reused
        if was_up or not self._down_logged:
            self._down_logged = True
            log.warning(
                "fleet link down: %s; going on with local state",
                self.last_error,
                extra={"redis": _safe_url(self.url), "instance": self.instance},
            )

    def _joined(self, now: float) -> None:
        self.ok += 1
        self.last_ok = now
        self._backoff = self.tick
        if not self.up:
            self.up = True
            self._down_logged = False
            log.info(
                "fleet link up",
                extra={
                    "redis": _safe_url(self.url),
                    "instance": self.instance,
                    "service": self.service,
                    "peers": len(self.exchange.view.peers),
                },
            )


def _id_ms(entry_id: str) -> int:
    head = entry_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out (fleet.op_timeout)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


def _safe_url(url: str) -> str:
    """The Redis URL without its password (it goes to the logs)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}{sep}{user + ':***' if user else '***'}@{host}"
