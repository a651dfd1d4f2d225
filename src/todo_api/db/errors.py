"""What a database error means for the request that met it: unavailable (503), a unique index (409), or a
pooler the URL did not announce (prepared statements that vanished between two server connections)."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
from sqlalchemy import exc

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

# A prepared statement that does not exist (26000) or already exists (42P05): what a transaction-mode pooler does to
# statements cached across transactions, when the URL did not say it was one.
POOLER_SQLSTATES = frozenset({"26000", "42P05"})


def _driver_error(error: BaseException) -> BaseException | None:
    return error.orig if isinstance(error, exc.DBAPIError) else error


def sqlstate(error: BaseException) -> str | None:
    code = getattr(_driver_error(error), "sqlstate", None)
    return code if isinstance(code, str) else None


def is_unavailable(error: BaseException) -> bool:
    """Whether this error means the database cannot serve us now, from SQLAlchemy or from asyncpg itself."""
    if isinstance(error, UNAVAILABLE_ERRORS):
        return True
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    driver_error = _driver_error(error)
    if type(driver_error).__name__ == "InterfaceError" and "connection is closed" in str(driver_error):
        return True  # asyncpg's, on a connection the server has closed
    code = sqlstate(error)
    return code is not None and code.startswith(_UNAVAILABLE_SQLSTATES)


def is_pooler_error(error: BaseException) -> bool:
    """A prepared statement lost or duplicated by a transaction-mode pooler (PgBouncer, Supabase, RDS Proxy)."""
    return sqlstate(error) in POOLER_SQLSTATES


def unique_violation(error: BaseException) -> str | None:
    """The text naming the unique index a statement violated (from SQLAlchemy or asyncpg), or None."""
    if isinstance(error, exc.IntegrityError):
        return str(error.orig)
    if isinstance(error, asyncpg.UniqueViolationError):
        return error.constraint_name or str(error)
    return None
