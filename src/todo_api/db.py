"""The database: URL handling (Neon, PgBouncer, SQLite), the engine, and one transaction per request."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from sqlalchemy import ClauseElement, DateTime, MetaData, event, exc
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from todo_api.config import Settings
from todo_api.errors import Unavailable

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


def create_engine(settings: Settings, *, url: str | None = None) -> AsyncEngine:
    parsed = parse_database_url(url or settings.database_url, settings.db_timeout)
    for warning in parsed.warnings:
        log.warning("DATABASE_URL: %s", warning)
    options: dict[str, Any] = {
        "connect_args": parsed.connect_args,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_timeout,
    }
    if parsed.is_sqlite:
        if parsed.url.database in (None, "", ":memory:"):
            options = {"connect_args": parsed.connect_args}  # one shared in-memory connection, no pool
        engine = create_async_engine(parsed.url, **options)
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        return engine
    # Recycled under Neon's idle timeout, so a suspended compute rarely hands back a dead socket.
    return create_async_engine(parsed.url, pool_recycle=240, **options)


class Database:
    """The engine, behind a fair queue.

    SQLAlchemy's pool lets a newcomer take a connection that was just returned ahead of those already waiting,
    which under load starves a few requests for seconds. A FIFO semaphore sized to the pool hands connections out
    in arrival order, and bounds the wait: past `timeout` seconds the request gets a 503."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")  # shares the pool
        if parse_database_url(settings.database_url).pooled:
            # PgBouncer in transaction mode (Debian's 1.18 has no max_prepared_statements) may hand the next round
            # trip to another server connection once a statement is outside a transaction, and SQLAlchemy prepares
            # and executes in two: "prepared statement … does not exist". Behind a pooler, reads keep to a
            # transaction too.
            self._autocommit = engine
        self._slots = asyncio.Semaphore(settings.db_pool_size + settings.db_max_overflow)
        self._timeout = settings.db_timeout

    @asynccontextmanager
    async def connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A write gets one transaction, committed on success and rolled back on any error; a read runs in
        autocommit, as its single statement needs no BEGIN/COMMIT round trips."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self._timeout)
        except TimeoutError:
            raise Unavailable("The database is too busy or not answering.") from None
        try:
            async with (self.engine if write else self._autocommit).connect() as connection:
                transaction = await connection.begin() if write else None
                try:
                    yield connection
                    if transaction is not None:
                        try:
                            await transaction.commit()
                        except BaseException:
                            # A COMMIT that failed leaves the connection in a state nobody should inherit.
                            await connection.invalidate()
                            raise
                except BaseException as error:
                    if is_unavailable(error) and not connection.invalidated:
                        # A database that timed out would make the rollback wait another DB_TIMEOUT: drop the
                        # connection instead (the server rolls back when it sees the socket close).
                        await connection.invalidate()
                    raise  # closing the connection rolls back whatever is still open
        finally:
            self._slots.release()


async def get_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """The request's connection, plain Core (no ORM session: every statement here is explicit and cheap)."""
    database: Database = request.app.state.context.database
    async with database.connection(write=request.method not in ("GET", "HEAD")) as connection:
        yield connection


_compiled_sql: dict[ClauseElement, tuple[str, tuple[str, ...], dict[str, Any]]] = {}


async def fetch_all(
    connection: AsyncConnection, statement: ClauseElement, params: Mapping[str, Any]
) -> Sequence[Mapping[str, Any]]:
    """The rows of a read-only statement, as mappings.

    On PostgreSQL in autocommit (every read-only request), asyncpg runs the statement itself: SQLAlchemy compiles
    it once, and each call skips SQLAlchemy's execution and result machinery, which is most of a read's CPU time.
    Inside a transaction, or on SQLite, the statement goes through SQLAlchemy as usual."""
    options = connection.sync_connection.get_execution_options() if connection.sync_connection else {}
    if connection.dialect.driver != "asyncpg" or options.get("isolation_level") != "AUTOCOMMIT":
        result = await connection.execute(statement, params)  # type: ignore[call-overload]
        return cast("Sequence[Mapping[str, Any]]", result.mappings().all())
    compiled = _compiled_sql.get(statement)
    if compiled is None:
        sql = cast(SQLCompiler, statement.compile(dialect=connection.dialect))
        # The statement's own literals (e.g. the 0 of coalesce(…, 0)) are bound parameters with a value.
        literals = {name: bind.effective_value for name, bind in sql.binds.items() if not bind.required}
        compiled = _compiled_sql[statement] = (sql.string, tuple(sql.positiontup or ()), literals)
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    sql_text, names, literals = compiled
    values = [params[name] if name in params else literals[name] for name in names]
    records: Sequence[Mapping[str, Any]] = await driver.fetch(sql_text, *values)
    return records


Connection = Annotated[AsyncConnection, Depends(get_connection, scope="function")]


# What "the database is not answering" looks like from SQLAlchemy, the drivers and the socket layer.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.TimeoutError,
    exc.DisconnectionError,
    OSError,  # refused, reset, unreachable, name not resolved
    asyncio.TimeoutError,
    sqlite3.OperationalError,
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
