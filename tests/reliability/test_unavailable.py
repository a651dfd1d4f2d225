"""Which errors mean "the database cannot serve us now" (503 and a dropped connection) rather than a bug (500).

The fault tests prove it with a real PostgreSQL; these pin down the classification itself, without one: errors as
SQLAlchemy wraps them, and as asyncpg raises them to the statements that run on asyncpg directly."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc

from todo_api.db import is_unavailable


def wrapped(error: Exception) -> exc.DBAPIError:
    return exc.DBAPIError("SELECT 1", None, error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another server process"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.ProtocolViolationError("query_wait_timeout"),  # PgBouncer's 08P01
        asyncpg.exceptions.InterfaceError("cannot perform operation: connection is closed"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_the_database_going_away_is_unavailable(error: Exception) -> None:
    assert is_unavailable(error)
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
        assert is_unavailable(wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.exceptions.UndefinedTableError('relation "tasks" does not exist'),
        asyncpg.exceptions.InterfaceError("the server expects 2 arguments for this query, 1 was passed"),
        ValueError("not a database error"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_bugs_are_not_unavailable(error: Exception) -> None:
    assert not is_unavailable(error)
    assert not is_unavailable(wrapped(error))
