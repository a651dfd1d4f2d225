"""The relay: publishes outbox rows in commit order, at least once, then marks them published.

Order. The relay reads the oldest unpublished rows (`ORDER BY seq`), hands them to the publisher in that order,
and marks exactly the rows the broker took (by their `seq`, never "everything up to n": a row with a smaller
`seq` may commit after the batch was read, and must still go out). The first event the broker refuses stops the
batch: it and everything after it wait in the outbox and are retried, with back-off, oldest first. So no event
of a user ever overtakes an earlier one of the same user, because for one owner `seq` order is commit order,
and a row is visible only once every earlier row of its owner is (see `todo_api.events.outbox`: SQLite has a
single writer, and on PostgreSQL each write takes a per-owner transaction lock before it draws its `seq`). Rows
of different owners may commit out of `seq` order and are then published in the order the relay sees them,
which is harmless: consumers partition by owner, and no order between two owners was ever promised.

At least once. A row is marked published only after the broker acknowledged it; a relay that dies between the
two publishes those rows again on restart, with the same CloudEvent `id` (the payload is fixed at write time).

One active relay. Two relays working at once could each send a different batch of one user's events, and the
broker would interleave them. So only the relay holding the leadership works; the others stand by and retry
every `standby_interval` seconds:

* PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) on the relay's own connection, which also
  does all the relay's reads and writes. When the relay process dies its connection closes and PostgreSQL
  releases the lock at once; a standby takes over at its next try (about a second). If the relay's host vanishes
  without closing the socket, TCP keepalives (set on the connection) let the server notice within about 25 s. A
  session lock does not survive PgBouncer in transaction mode, so the relay refuses a pooled URL and uses
  `DATABASE_URL_DIRECT`.
* SQLite: an exclusive `flock` on `<database file>.relay-lock`, released by the kernel when the process dies.
  It works between the server's workers and `todo-api relay` processes on the one machine that holds the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from todo_api.config import ConfigError, Settings
from todo_api.db import parse_database_url, utcnow
from todo_api.events.models import outbox
from todo_api.events.publishers import PendingEvent, Publisher, PublishError, make_publisher

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one relay per SQLite file is up to the operator
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("todo_api.events.relay")

# The relay's leadership lock (bigint key space; the per-owner write locks use the two-int space).
RELAY_LOCK_KEY = 0x746F646F2D72656C  # "todo-rel"

_PENDING = (
    select(outbox.c.seq, outbox.c.partition_key, outbox.c.payload)
    .where(outbox.c.published_at.is_(None))
    .order_by(outbox.c.seq)
    .limit(bindparam("limit"))
)
_MARK = (
    update(outbox)
    .where(outbox.c.seq.in_(bindparam("seqs", expanding=True)))
    .values(published_at=bindparam("published_at"))
)
_PRUNE = delete(outbox).where(outbox.c.published_at < bindparam("cutoff"))


class Leadership(Protocol):
    async def acquire(self, connection: AsyncConnection) -> bool: ...
    async def release(self, connection: AsyncConnection) -> None: ...


class AdvisoryLock:
    """PostgreSQL: a session-level advisory lock on the relay's connection."""

    async def acquire(self, connection: AsyncConnection) -> bool:
        result = await connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LOCK_KEY})
        return bool(result.scalar())

    async def release(self, connection: AsyncConnection) -> None:
        await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RELAY_LOCK_KEY})


class FileLock:
    """SQLite: an exclusive flock on a file beside the database, dropped by the kernel if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def acquire(self, connection: AsyncConnection) -> bool:
        if fcntl is None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self, connection: AsyncConnection) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None


class NoLock:
    """An in-memory SQLite database: only this process can see it, so there is nobody to lead."""

    async def acquire(self, connection: AsyncConnection) -> bool:
        return True

    async def release(self, connection: AsyncConnection) -> None:
        return None


class Relay:
    def __init__(
        self,
        engine: AsyncEngine,
        publisher: Publisher,
        leadership: Leadership,
        *,
        batch_size: int = 200,
        poll_interval: float = 0.2,
        standby_interval: float = 1.0,
        retention: timedelta = timedelta(days=7),
        prune_interval: float = 300.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.leadership = leadership
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        self.retention = retention
        self.prune_interval = prune_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.active = False  # holds the leadership right now
        self.published = 0  # events the broker acknowledged (duplicates included)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, give up the leadership and return from run()."""
        self._stopping.set()

    async def close(self) -> None:
        await self.publisher.close()
        await self.engine.dispose()

    async def run(self) -> None:
        """Stand by until this relay leads, then relay until stopped; a lost database means standing by again."""
        failures = 0
        while not self._stopping.is_set():
            try:
                async with self.engine.connect() as connection:
                    await connection.execution_options(isolation_level="AUTOCOMMIT")
                    while not await self.leadership.acquire(connection):  # standing by
                        failures = 0
                        await self._sleep(self.standby_interval)
                        if self._stopping.is_set():
                            log.info("event relay stopped (it was standing by)")
                            return
                    try:
                        self.active = True
                        log.info("event relay active (publisher: %s)", self.publisher.name)
                        failures = 0
                        await self._relay(connection)
                    finally:
                        self.active = False
                        with contextlib.suppress(Exception):
                            await self.leadership.release(connection)
            except Exception as error:
                failures += 1
                delay = self._backoff(failures)
                log.warning("event relay: database error (%s); retrying in %.1f s", type(error).__name__, delay)
                await self._sleep(delay)
        log.info("event relay stopped")

    async def _relay(self, connection: AsyncConnection) -> None:
        failures = 0
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            if loop.time() >= next_prune:
                await self.prune(connection)
                next_prune = loop.time() + self.prune_interval
            batch = await self._pending(connection)
            if not batch:
                await self._sleep(self.poll_interval)
                continue
            delivered, error = await self._publish(batch)
            if delivered:
                await self._mark(connection, batch[:delivered])
            if error is None:
                failures = 0
                continue
            failures += 1
            delay = self._backoff(failures)
            log.warning(
                "event relay: %s failed (%s); %d event(s) wait in the outbox, retrying in %.1f s",
                self.publisher.name,
                error,
                len(batch) - delivered,
                delay,
            )
            await self._sleep(delay)

    async def _pending(self, connection: AsyncConnection) -> list[PendingEvent]:
        rows = await connection.execute(_PENDING, {"limit": self.batch_size})
        return [PendingEvent(row.seq, row.partition_key, row.payload) for row in rows]

    async def _publish(self, batch: Sequence[PendingEvent]) -> tuple[int, str | None]:
        try:
            await self.publisher.publish(batch)
        except PublishError as error:
            self.published += error.delivered
            return error.delivered, str(error)
        except Exception as error:
            return 0, type(error).__name__
        self.published += len(batch)
        return len(batch), None

    async def _mark(self, connection: AsyncConnection, events: Sequence[PendingEvent]) -> None:
        await connection.execute(_MARK, {"seqs": [event.seq for event in events], "published_at": utcnow()})

    async def prune(self, connection: AsyncConnection) -> int:
        """Delete events published longer ago than the retention period."""
        result: Any = await connection.execute(_PRUNE, {"cutoff": utcnow() - self.retention})
        count: int = result.rowcount or 0
        if count:
            log.info("event relay: pruned %d published event(s)", count)
        return count

    def _backoff(self, failures: int) -> float:
        delay: float = min(self.backoff_max, self.backoff_initial * 2 ** min(failures - 1, 16))
        return delay * random.uniform(0.75, 1.0)  # noqa: S311  (jitter, not cryptography)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def relay_engine(settings: Settings) -> tuple[AsyncEngine, Leadership]:
    """The relay's own engine (no pool: its one connection lives as long as the leadership) and its lock."""
    parsed = parse_database_url(settings.migration_url, settings.db_timeout)
    connect_args: dict[str, Any] = dict(parsed.connect_args)
    leadership: Leadership
    if parsed.is_sqlite:
        database = parsed.url.database
        leadership = NoLock() if database in (None, "", ":memory:") else FileLock(Path(f"{database}.relay-lock"))
    else:
        if parsed.pooled:
            raise ConfigError(
                "the event relay holds a session lock, which PgBouncer's transaction mode cannot keep: "
                "set DATABASE_URL_DIRECT to a non-pooled URL"
            )
        connect_args.pop("command_timeout", None)  # the relay may wait longer than a request would
        connect_args["server_settings"] = {
            "application_name": "todo-api relay",
            # Let the server drop the leader's session (and so its lock) soon after its host vanishes.
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "3",
        }
        leadership = AdvisoryLock()
    engine = create_async_engine(parsed.url, connect_args=connect_args, poolclass=NullPool)
    return engine, leadership


def relay_from_settings(settings: Settings, **options: Any) -> Relay:
    engine, leadership = relay_engine(settings)
    retention = timedelta(hours=settings.events_retention_hours)
    return Relay(engine, make_publisher(settings), leadership, retention=retention, **options)


@contextlib.asynccontextmanager
async def inline_relay(settings: Settings) -> AsyncIterator[Relay | None]:
    """EVENTS_RELAY=inline: a relay in this server process for as long as the app runs (one leads, the rest of
    the workers stand by)."""
    if settings.events_relay != "inline" or settings.events_publisher == "none":
        yield None
        return
    relay = relay_from_settings(settings)
    task = asyncio.create_task(relay.run(), name="event-relay")
    try:
        yield relay
    finally:
        relay.stop()
        try:
            await asyncio.wait_for(task, timeout=settings.db_timeout * 2)
        except TimeoutError:
            log.warning("event relay did not stop in time; its unmarked events will be published again")
        finally:
            await relay.close()


async def serve_relay(settings: Settings) -> None:
    """`todo-api relay`: relay until SIGTERM or SIGINT, then stop after the batch in hand."""
    relay = relay_from_settings(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.stop)
    try:
        await relay.run()
    finally:
        await relay.close()
