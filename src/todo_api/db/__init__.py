"""The database, by concern: `url` (Neon, poolers, SQLite), `pool` (connections and units of work), `types`
(column types shared by the tables), `errors` (what a database error means for a request)."""

from todo_api.db.errors import is_pooler_error, is_unavailable, unique_violation
from todo_api.db.pool import Database, Dialect, PostgresSession, Row, Session, SqlAlchemySession
from todo_api.db.types import UTCDateTime, metadata, utcnow
from todo_api.db.url import DatabaseUrl, parse_database_url

__all__ = [
    "Database",
    "DatabaseUrl",
    "Dialect",
    "PostgresSession",
    "Row",
    "Session",
    "SqlAlchemySession",
    "UTCDateTime",
    "is_pooler_error",
    "is_unavailable",
    "metadata",
    "parse_database_url",
    "unique_violation",
    "utcnow",
]
