"""Connections for requests: an asyncpg pool on PostgreSQL, a SQLAlchemy engine on SQLite, each behind a FIFO gate.

A unit of work is one `Database.session()`: its statements stand or fall together (see `session`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import lru_cache
from typing import Any, Literal, Protocol, cast

import asyncpg
from sqlalchemy import ClauseElement, event
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler

from todo_api.config import Settings
from todo_api.db.errors import is_pooler_error, is_unavailable
from todo_api.db.url import DatabaseUrl, parse_database_url
from todo_api.errors import Unavailable

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
Dialect = Literal["postgresql", "sqlite"]
Rerun = Callable[[str, list[Any]], Awaitable[Sequence[Row]]]


class Session(Protocol):
    """One connection, held for the length of a unit of work: a statement and its parameters in, the rows out.

    Statements are built once, with bind parameters (SQLAlchemy Core over the SQLModel tables); per request only
    the values change. `dialect` lets a repository pick the statement its database understands."""

    @property
    def dialect(self) -> Dialect: ...

    async def fetch(self, statement: ClauseElement, params: Mapping[str, Any]) -> Sequence[Row]: ...


_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


@lru_cache(maxsize=512)
def _compiled(statement: ClauseElement) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """SQL with `$n` placeholders, the parameter name of each, and the values of the statement's own literals
    (such as the 0 of `coalesce(…, 0)`); built once per statement."""
    sql = cast(SQLCompiler, statement.compile(dialect=_ASYNCPG))
    literals = {name: bind.effective_value for name, bind in sql.binds.items() if not bind.required}
    return sql.string, tuple(sql.positiontup or ()), literals


class PostgresSession:
    """Statements compiled once by SQLAlchemy and run by asyncpg itself: SQLAlchemy's execution and result
    machinery (and its greenlet bridge) would be most of a request's CPU time."""

    __slots__ = ("connection", "rerun")
    dialect: Dialect = "postgresql"

    def __init__(self, connection: asyncpg.Connection, rerun: Rerun | None = None) -> None:
        self.connection = connection
        self.rerun = rerun  # outside a transaction: where a statement a pooler lost runs again

    async def fetch(self, statement: ClauseElement, params: Mapping[str, Any]) -> Sequence[Row]:
        sql, names, literals = _compiled(statement)
        values = [params[name] if name in params else literals[name] for name in names]
        try:
            rows: Sequence[Row] = await self.connection.fetch(sql, *values)
        except asyncpg.PostgresError as error:
            if self.rerun is None or not is_pooler_error(error):
                raise
            # The statement ran nothing (a lost statement fails at bind, a duplicate at parse) and stands alone
            # (no transaction): running it again elsewhere is what it would have been.
            rows = await self.rerun(sql, values)
        return rows


class SqlAlchemySession:
    """The same through SQLAlchemy: on SQLite (aiosqlite), and for tools that hold a SQLAlchemy connection."""

    __slots__ = ("connection", "dialect")

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.dialect: Dialect = "postgresql" if connection.dialect.name == "postgresql" else "sqlite"

    async def fetch(self, statement: ClauseElement, params: Mapping[str, Any]) -> Sequence[Row]:
        result = await self.connection.execute(statement, params)  # type: ignore[call-overload]
        return cast("Sequence[Row]", result.mappings().all() if result.returns_rows else ())


_PROCESS_TAG = os.urandom(6).hex()
_statement_ids = itertools.count(1)


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg names its cached statements by a counter every process starts at 1, so behind a pooler the URL did
    not announce, another client's `__asyncpg_stmt_1__` may already exist on the server connection we land on — a
    different statement, run with our parameters. Names unique to this process make such a statement simply not
    found (SQLSTATE 26000), which `Database` recognises and heals."""

    def _get_unique_id(self, prefix: str) -> str:
        return f"__todo_{_PROCESS_TAG}_{prefix}_{next(_statement_ids):x}__"


async def _keep_session_state(_: asyncpg.Connection) -> None:
    """asyncpg's default reset on release (RESET ALL, UNLISTEN, CLOSE ALL, …) costs a round trip per request, and
    nothing here changes session state; an open transaction is still rolled back by asyncpg itself."""


def _drop(connection: asyncpg.Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already closed and handed back by the pool itself
        connection.terminate()


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by us (see _on_sqlite_begin), not by the driver's guesswork.
    dbapi_connection.isolation_level = None
    # Unicode-aware lower(): SQLite's own folds only ASCII, PostgreSQL folds everything.
    dbapi_connection.create_function("lower", 1, _sqlite_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _on_sqlite_begin(connection: Any) -> None:
    # A write takes SQLite's one write lock at BEGIN, so what it reads stays true until it commits: writes are
    # serialised, and a read-then-write never fails half-way on a lock it could not upgrade.
    immediate = connection.get_execution_options().get("todo_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _sqlite_engine(parsed: DatabaseUrl, settings: Settings) -> AsyncEngine:
    options: dict[str, Any] = {
        "connect_args": parsed.connect_args,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_timeout,
    }
    if parsed.url.database in (None, "", ":memory:"):
        options = {"connect_args": parsed.connect_args}  # one shared in-memory connection, no pool
    engine = create_async_engine(parsed.url, **options)
    event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
    return engine


class Database:
    """Connections for requests: an asyncpg pool on PostgreSQL, a SQLAlchemy engine on SQLite.

    Pools (asyncpg's and SQLAlchemy's alike) let a newcomer take a connection that was just returned ahead of those
    already waiting, which under load starves a few requests for seconds. A FIFO semaphore sized to the pool hands
    connections out in arrival order, and bounds the wait: past `timeout` seconds the request gets a 503."""

    def __init__(self, settings: Settings) -> None:
        self.url = parse_database_url(
            settings.database_url, settings.db_timeout, behind_pooler=settings.database_url_direct is not None
        )
        for warning in self.url.warnings:
            log.warning("DATABASE_URL: %s", warning)
        # A write that records an event is two statements (the change, its outbox row): those need a transaction.
        self.writes_record_events = settings.events_publisher != "none"
        self._settings = settings
        self._timeout = settings.db_timeout
        # Sampled into the metrics (observability.metrics.sample): plain counters cost a request nothing.
        self.in_use = 0
        self.waiting = 0
        self._pool: asyncpg.Pool | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._switching = asyncio.Lock()
        self._slots = asyncio.Semaphore(settings.db_pool_size + settings.db_max_overflow)
        self.engine: AsyncEngine | None = None
        if self.url.is_sqlite:
            self.engine = _sqlite_engine(self.url, settings)
            self._writer = self.engine.execution_options(todo_write=True)  # shares the pool

    @property
    def dialect(self) -> Dialect:
        return "sqlite" if self.url.is_sqlite else "postgresql"

    async def start(self) -> None:
        """Create the pool (no connection is opened yet: a database that is down now is retried on demand)."""
        if not self.url.is_sqlite:
            self._pool = await self._create_pool()

    async def _create_pool(self) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            self.url.asyncpg_dsn(),
            min_size=0,
            max_size=self._settings.db_pool_size + self._settings.db_max_overflow,
            # Closed when idle, under Neon's idle timeout: a suspended compute rarely hands back a dead socket.
            max_inactive_connection_lifetime=240,
            reset=_keep_session_state,
            connection_class=_Connection,
            **self.url.asyncpg_args(),
        )

    async def close(self) -> None:
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
        if self.engine is not None:
            await self.engine.dispose()

    def session(self, *, write: bool) -> AbstractAsyncContextManager[Session]:
        """A connection for one unit of work, whose statements stand or fall together.

        On PostgreSQL a write is one statement (atomic by itself, and one round trip), unless it also records an
        event: then the change and its outbox row run in one transaction, committed on success and rolled back on
        any error. Behind a pooler every unit runs in a transaction, because asyncpg's prepare and execute are two
        exchanges that a transaction-mode pooler may hand to different server connections. SQLite always runs a
        transaction (`BEGIN IMMEDIATE` for writes)."""
        if self._pool is not None:
            return self._postgres(write=write)
        return self._sqlite(write=write)

    @asynccontextmanager
    async def _postgres(self, *, write: bool) -> AsyncIterator[Session]:
        try:
            async with asyncio.timeout(self._timeout):
                self.waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self.waiting -= 1
                # Chosen only now: the pool (and the way it is used) may have been replaced while this one waited.
                pool: asyncpg.Pool = self._pool
                transaction = (write and self.writes_record_events) or self.url.pooled
                try:
                    connection: asyncpg.Connection = await pool.acquire()
                except BaseException:
                    self._slots.release()
                    raise
        except TimeoutError:
            raise Unavailable("The database is too busy or not answering.") from None
        self.in_use += 1
        try:
            if transaction:
                await connection.execute("BEGIN")
                yield PostgresSession(connection)
            else:
                yield PostgresSession(connection, functools.partial(self._rerun_pooled, pool))
            if transaction:
                await connection.execute("COMMIT")
        except BaseException as error:
            if is_unavailable(error) or isinstance(error, asyncio.CancelledError):
                # Never hand a connection that failed this way to the next request; and in a transaction, a database
                # that timed out would make the rollback wait as long again (the server rolls back on its own when
                # it sees the socket close).
                _drop(connection)
            elif transaction:
                try:
                    await connection.execute("ROLLBACK")
                except Exception:
                    _drop(connection)
            if is_pooler_error(error):
                # In a transaction, which the pooler's error rolled back: this one request is answered 503.
                await self._use_pooled_way(pool)
                raise Unavailable("The database connection was reconfigured; try again.", retry_after=1) from None
            raise
        finally:
            self.in_use -= 1
            try:
                await pool.release(connection)
            finally:
                self._slots.release()

    async def _use_pooled_way(self, failed: asyncpg.Pool) -> None:
        """A pooler the URL did not announce lost or duplicated a prepared statement: from now on, use it the pooled
        way (no statement cache, a transaction per unit). The statement that met it ran nothing (a missing statement
        fails at bind, a duplicate at parse), and its unit was rolled back."""
        async with self._switching:  # the new pool is made with awaits: one switch, however many meet the error
            if self._pool is not failed or failed is None:
                return  # another request switched already
            await self._switch(failed)

    async def _switch(self, failed: asyncpg.Pool) -> None:
        log.warning(
            "DATABASE_URL behaves like a transaction-mode pooler (PgBouncer, Supavisor, RDS Proxy …) though it does "
            "not say so: switching to pooled connections. Set DATABASE_URL_DIRECT (or ?pgbouncer=true) to say so."
        )
        self.url = self.url.as_pooled()
        self._pool = await self._create_pool()
        # Requests still holding a connection of the old pool finish on it; close() waits for them.
        retiring = asyncio.create_task(failed.close())
        self._retired.add(retiring)
        retiring.add_done_callback(self._retired.discard)

    async def _rerun_pooled(self, failed: asyncpg.Pool, sql: str, values: list[Any]) -> Sequence[Row]:
        """A lone statement that a pooler lost, run again the pooled way on a connection of the new pool. The unit
        that ran it holds a slot of the FIFO gate with its old connection, so the new pool has one to spare."""
        await self._use_pooled_way(failed)
        pool: asyncpg.Pool = self._pool
        async with asyncio.timeout(self._timeout), pool.acquire() as connection, connection.transaction():
            rows: Sequence[Row] = await connection.fetch(sql, *values)
        return rows

    @asynccontextmanager
    async def _sqlite(self, *, write: bool) -> AsyncIterator[Session]:
        assert self.engine is not None
        self.waiting += 1
        waiting = True
        try:
            async with (self._writer if write else self.engine).connect() as connection, connection.begin():
                self.waiting -= 1
                waiting = False
                self.in_use += 1
                try:
                    yield SqlAlchemySession(connection)
                finally:
                    self.in_use -= 1
        finally:
            if waiting:
                self.waiting -= 1
