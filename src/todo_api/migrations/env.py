"""Alembic environment. `todo-api migrate` hands it a connection; `alembic` on the command line does not."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from todo_api.auth.models import User  # noqa: F401  (registers the table)
from todo_api.config import get_settings
from todo_api.db import metadata
from todo_api.events.models import OutboxEvent  # noqa: F401
from todo_api.tasks.models import Task, TaskCount  # noqa: F401


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine() -> None:
    from todo_api.migrate import upgrade_engine

    async with upgrade_engine(get_settings().migration_url) as engine, engine.connect() as connection:
        await connection.run_sync(run_migrations)
        await connection.commit()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    asyncio.run(run_with_own_engine())
