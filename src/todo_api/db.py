"""The database: URL handling (Neon, PgBouncer, SQLite), the engine, and one transaction per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, cast

import asyncpg
from sqlalchemy import ClauseElement, DateTime, MetaData, event, exc
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from todo_api.config import Settings
from todo_api.errors import Unavailable

if TYPE_CHECKING:
    from todo_api.events.outbox import Outbox

log = logging.getLogger(__name__)

# Stable constraint and index names, so Alembic migrations stay reviewable (and droppable) on every backend.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

# libpq parameters that asyncpg does not take as keywords; sslmode and channel_binding are translated below.
_LIBPQ_ONLY = {
    "sslmode",
    "channel_binding",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "target_session_attrs",
    "connect_timeout",
    "options",
    "pgbouncer",
    "application_name",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, with microseconds, on PostgreSQL (timestamptz) and SQLite (text) alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class DatabaseUrl:
    """A URL the async drivers take, plus the connect arguments it implies."""

    url: URL
    connect_args: dict[str, Any]
    pooled: bool  # behind PgBouncer in transaction mode: no server-side prepared statement cache
    warnings: tuple[str, ...] = ()

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def asyncpg_dsn(self) -> str:
        """The URL as asyncpg itself takes it (no SQLAlchemy driver name or options)."""
        query = {key: value for key, value in self.url.query.items() if key != "prepared_statement_cache_size"}
        return self.url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def parse_database_url(raw: str, timeout: float = 5.0) -> DatabaseUrl:
    """Turn a URL as Neon, Heroku or a developer writes it into one for asyncpg or aiosqlite."""
    url = make_url(raw.strip())
    backend = url.get_backend_name()
    if backend == "sqlite":
        return DatabaseUrl(url.set(drivername="sqlite+aiosqlite"), {"timeout": timeout}, pooled=False)
    if backend not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// or sqlite:// URL, not {backend}://")

    query = dict(url.query)
    warnings: list[str] = []
    # A statement that times out is answered only after asyncpg's attempt to cancel it, which may take as long again:
    # half the budget each keeps a database that hangs within `timeout`.
    connect_args: dict[str, Any] = {"timeout": timeout, "command_timeout": timeout / 2}
    sslmode = query.get("sslmode")
    if isinstance(sslmode, str):
        # asyncpg understands libpq's sslmode names (disable … verify-full) through its `ssl` argument.
        connect_args["ssl"] = sslmode
    if query.get("channel_binding") not in (None, "disable"):
        warnings.append("channel_binding is not supported by asyncpg and was dropped; TLS still applies")
    host = url.host or ""
    pooled = "-pooler" in host or query.get("pgbouncer") == "true"
    if pooled:
        # PgBouncer in transaction mode: a connection may land on another server process for every
        # transaction, so statements are prepared unnamed-per-use and never cached.
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4()}__"
    clean_query = {key: value for key, value in query.items() if key not in _LIBPQ_ONLY}
    if pooled:
        clean_query["prepared_statement_cache_size"] = "0"
    return DatabaseUrl(
        url.set(drivername="postgresql+asyncpg", query=clean_query),
        connect_args,
        pooled=pooled,
        warnings=tuple(warnings),
    )


def _sqlite_lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Unicode-aware lower(): SQLite's own folds only ASCII, PostgreSQL folds everything.
    dbapi_connection.create_function("lower", 1, _sqlite_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


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
    return engine


Row = Mapping[str, Any]


class Session(Protocol):
    """One connection, held for the length of a request: a statement and its parameters in, the rows out.

    Statements are built once, with bind parameters (SQLAlchemy Core over the SQLModel tables); per request only
    the values change. `outbox` is where this session records events (None: events are off)."""

    outbox: Outbox | None

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

    __slots__ = ("connection", "outbox")

    def __init__(self, connection: asyncpg.Connection, outbox: Outbox | None) -> None:
        self.connection = connection
        self.outbox = outbox

    async def fetch(self, statement: ClauseElement, params: Mapping[str, Any]) -> Sequence[Row]:
        sql, names, literals = _compiled(statement)
        values = [params[name] if name in params else literals[name] for name in names]
        rows: Sequence[Row] = await self.connection.fetch(sql, *values)
        return rows


class SqlAlchemySession:
    """The same on SQLite, through SQLAlchemy (aiosqlite)."""

    __slots__ = ("connection", "outbox")

    def __init__(self, connection: AsyncConnection, outbox: Outbox | None) -> None:
        self.connection = connection
        self.outbox = outbox

    async def fetch(self, statement: ClauseElement, params: Mapping[str, Any]) -> Sequence[Row]:
        result = await self.connection.execute(statement, params)  # type: ignore[call-overload]
        return cast("Sequence[Row]", result.mappings().all() if result.returns_rows else ())


async def _keep_session_state(_: asyncpg.Connection) -> None:
    """asyncpg's default reset on release (RESET ALL, UNLISTEN, CLOSE ALL, …) costs a round trip per request, and
    nothing here changes session state; an open transaction is still rolled back by asyncpg itself."""


def _drop(connection: asyncpg.Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already closed and handed back by the pool itself
        connection.terminate()


class Database:
    """Connections for requests: an asyncpg pool on PostgreSQL, a SQLAlchemy engine on SQLite.

    Pools (asyncpg's and SQLAlchemy's alike) let a newcomer take a connection that was just returned ahead of those
    already waiting, which under load starves a few requests for seconds. A FIFO semaphore sized to the pool hands
    connections out in arrival order, and bounds the wait: past `timeout` seconds the request gets a 503."""

    def __init__(self, settings: Settings) -> None:
        self.url = parse_database_url(settings.database_url, settings.db_timeout)
        for warning in self.url.warnings:
            log.warning("DATABASE_URL: %s", warning)
        self.outbox: Outbox | None = None  # set when events are recorded (EVENTS_PUBLISHER)
        self._settings = settings
        self._timeout = settings.db_timeout
        self._pool: asyncpg.Pool | None = None
        self._slots = asyncio.Semaphore(settings.db_pool_size + settings.db_max_overflow)
        self.engine: AsyncEngine | None = None
        if self.url.is_sqlite:
            self.engine = _sqlite_engine(self.url, settings)
            self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")  # shares the pool

    async def start(self) -> None:
        """Create the pool (no connection is opened yet: a database that is down now is retried on demand)."""
        if self.url.is_sqlite:
            return
        args = {k: v for k, v in self.url.connect_args.items() if k != "prepared_statement_name_func"}
        self._pool = await asyncpg.create_pool(
            self.url.asyncpg_dsn(),
            min_size=0,
            max_size=self._settings.db_pool_size + self._settings.db_max_overflow,
            # Closed when idle, under Neon's idle timeout: a suspended compute rarely hands back a dead socket.
            max_inactive_connection_lifetime=240,
            reset=_keep_session_state,
            **args,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self.engine is not None:
            await self.engine.dispose()

    def session(self, *, write: bool) -> AbstractAsyncContextManager[Session]:
        """A connection for one request. A write that also records an event runs in one transaction, committed on
        success and rolled back on any error, so the change and its event stand or fall together. Every other
        statement commits by itself: the services need no more (their writes are single conditional statements),
        and BEGIN/COMMIT would be two more round trips."""
        if self._pool is not None:
            # Behind PgBouncer in transaction mode (Debian's 1.18 has no max_prepared_statements) asyncpg's
            # prepare and execute may land on different server connections outside a transaction.
            transaction = (write and self.outbox is not None) or self.url.pooled
            return self._postgres(self._pool, transaction=transaction)
        return self._sqlite(write=write)

    @asynccontextmanager
    async def _postgres(self, pool: asyncpg.Pool, *, transaction: bool) -> AsyncIterator[Session]:
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
                try:
                    connection: asyncpg.Connection = await pool.acquire()
                except BaseException:
                    self._slots.release()
                    raise
        except TimeoutError:
            raise Unavailable("The database is too busy or not answering.") from None
        try:
            if transaction:
                await connection.execute("BEGIN")
            yield PostgresSession(connection, self.outbox)
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
            raise
        finally:
            try:
                await pool.release(connection)
            finally:
                self._slots.release()

    @asynccontextmanager
    async def _sqlite(self, *, write: bool) -> AsyncIterator[Session]:
        assert self.engine is not None
        async with (self.engine if write else self._autocommit).connect() as connection:
            if not write:
                yield SqlAlchemySession(connection, self.outbox)
                return
            async with connection.begin():
                yield SqlAlchemySession(connection, self.outbox)


# What "the database is not answering" looks like from SQLAlchemy, the drivers and the socket layer.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.TimeoutError,
    exc.DisconnectionError,
    OSError,  # refused, reset, unreachable, name not resolved
    asyncio.TimeoutError,
    sqlite3.OperationalError,
    asyncpg.InternalClientError,  # a connection left mid-operation when the server went away
)


# SQLSTATEs of a server that cannot serve us now: connection exceptions (class 08, also what PgBouncer sends when it
# cannot reach the server), shutting down or starting up (57P01-57P03), out of connections (53300).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_unavailable(error: BaseException) -> bool:
    """Whether this error means the database cannot serve us now, from SQLAlchemy or from asyncpg itself (reads that
    run on asyncpg directly see its own exceptions)."""
    if isinstance(error, UNAVAILABLE_ERRORS):
        return True
    driver_error: BaseException | None = error
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        driver_error = error.orig
    if type(driver_error).__name__ == "InterfaceError" and "connection is closed" in str(driver_error):
        return True  # asyncpg's, on a connection the server has closed
    sqlstate = getattr(driver_error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def utcnow() -> datetime:
    return datetime.now(UTC)


def unique_violation(error: BaseException) -> str | None:
    """The text naming the unique index a statement violated (from SQLAlchemy or asyncpg), or None."""
    if isinstance(error, exc.IntegrityError):
        return str(error.orig)
    if isinstance(error, asyncpg.UniqueViolationError):
        return error.constraint_name or str(error)
    return None
