"""Alembic, driven from code: the schema is only ever created or changed by these migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from todo_api.db import parse_database_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade_connection(connection: AsyncConnection, revision: str = "head") -> None:
    def run(sync_connection: Connection) -> None:
        command.upgrade(alembic_config(sync_connection), revision)

    await connection.run_sync(run)


@asynccontextmanager
async def upgrade_engine(url: str) -> AsyncIterator[AsyncEngine]:
    # Used the pooled way whatever the URL says: migrations are not a hot path, and then even a pooler nobody
    # announced (no DATABASE_URL_DIRECT) cannot lose a cached statement between two of them.
    parsed = parse_database_url(url).as_pooled()
    engine = create_async_engine(parsed.url, connect_args=parsed.connect_args, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


async def upgrade(url: str, revision: str = "head") -> None:
    async with upgrade_engine(url) as engine, engine.begin() as connection:
        await upgrade_connection(connection, revision)
