"""DATABASE_URL as Neon, Heroku, Supabase or a developer writes it, turned into what asyncpg or aiosqlite take;
and whether it points at a transaction-mode pooler."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.engine import URL, make_url

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

# asyncpg's arguments for a transaction-mode pooler: a connection may land on another server process for every
# transaction, so no statement is cached across transactions (asyncpg then prepares unnamed ones per use).
POOLED_ARGS: dict[str, Any] = {"statement_cache_size": 0}


@dataclass(frozen=True)
class DatabaseUrl:
    """A URL the async drivers take, plus the connect arguments it implies."""

    url: URL
    connect_args: dict[str, Any]
    pooled: bool  # behind a transaction-mode pooler: no server-side prepared statement outlives its transaction
    warnings: tuple[str, ...] = ()

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def asyncpg_dsn(self) -> str:
        """The URL as asyncpg itself takes it (no SQLAlchemy driver name or options)."""
        query = {key: value for key, value in self.url.query.items() if key != "prepared_statement_cache_size"}
        return self.url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)

    def asyncpg_args(self) -> dict[str, Any]:
        """Connect arguments for asyncpg itself (the SQLAlchemy-only ones left out)."""
        return {k: v for k, v in self.connect_args.items() if k != "prepared_statement_name_func"}

    def as_pooled(self) -> DatabaseUrl:
        """The same database, used the pooled way (for a pooler the URL did not announce)."""
        if self.pooled or self.is_sqlite:
            return self
        return replace(
            self,
            url=self.url.update_query_dict({"prepared_statement_cache_size": "0"}),
            connect_args={**self.connect_args, **_pooled_connect_args()},
            pooled=True,
        )


def _pooled_connect_args() -> dict[str, Any]:
    # SQLAlchemy's asyncpg dialect names its statements itself: unique names never collide on a shared server.
    return {**POOLED_ARGS, "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__"}


def is_pooler_host(host: str, query: dict[str, Any]) -> bool:
    return "-pooler" in host or query.get("pgbouncer") == "true"


def parse_database_url(raw: str, timeout: float = 5.0, *, behind_pooler: bool = False) -> DatabaseUrl:
    """Turn a URL as Neon, Heroku or a developer writes it into one for asyncpg or aiosqlite.

    `behind_pooler`: the caller knows the URL is a pooler (a DATABASE_URL_DIRECT beside it says so), whatever the
    host is called."""
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
    clean_query = {key: value for key, value in query.items() if key not in _LIBPQ_ONLY}
    parsed = DatabaseUrl(
        url.set(drivername="postgresql+asyncpg", query=clean_query),
        connect_args,
        pooled=False,
        warnings=tuple(warnings),
    )
    if behind_pooler or is_pooler_host(url.host or "", query):
        return parsed.as_pooled()
    return parsed
