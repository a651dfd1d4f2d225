from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, SmallInteger, Table, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

from todo_api.db import UTCDateTime

# Titles sort case-insensitively by code point, the same on every backend and whatever the database's locale.
TitleKey = Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


class TagList(TypeDecorator[list[str]]):
    """A task's tags: `text[]` on PostgreSQL (a GIN index answers `tags @> …`), a JSON array on SQLite."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(Text()))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: list[str] | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return json.dumps(value, ensure_ascii=False)

    def process_result_value(self, value: Any, dialect: Dialect) -> list[str] | None:
        if value is None or dialect.name == "postgresql":
            return value  # type: ignore[no-any-return]
        return list(json.loads(value))


# priority as stored: its rank, so that sorting by it is sorting by a small integer (and index-driven).
PRIORITIES = ("none", "low", "medium", "high")


class Task(SQLModel, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        # One index per sort order, each led by the owner and ended by the tie-breaker, so a page is an index
        # range scan whatever the table or the owner holds (PostgreSQL scans them backwards for `desc`).
        Index("ix_tasks_owner_created", "user_id", "created_at", "id"),
        Index("ix_tasks_owner_updated", "user_id", "updated_at", "id"),
        Index("ix_tasks_owner_title", "user_id", "title_key", "id"),
        Index("ix_tasks_owner_completed", "user_id", "completed", "id"),
        Index("ix_tasks_owner_priority", "user_id", "priority", "id"),
        # due_at sorts put tasks without one last in both directions; the two expression indexes (one per
        # direction, see migration 0004) sort by due_at with a sentinel for "none" that is dialect-specific.
    )

    id: uuid.UUID = Field(primary_key=True)
    user_id: str = Field(max_length=255)
    title: str = Field(max_length=200)
    title_key: str = Field(sa_type=TitleKey)  # lower(title), kept by the service
    description: str | None = Field(default=None, max_length=2000)
    completed: bool = False
    priority: int = Field(default=0, sa_type=SmallInteger)  # the rank in PRIORITIES
    due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    tags: list[str] = Field(default_factory=list, sa_column=Column(TagList(), nullable=False))
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # when `completed` last became true
    version: int = 1  # bumped by every change; the ETag is derived from it
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class TaskCount(SQLModel, table=True):
    """How many tasks an owner has, and how many are done: kept by database triggers (migration 0003), read by the
    listing so its exact `total` does not cost a count over all of the owner's tasks."""

    __tablename__ = "task_counts"

    user_id: str = Field(primary_key=True, max_length=255)
    total: int = Field(sa_type=BigInteger)
    completed: int = Field(sa_type=BigInteger)


tasks: Table = Task.__table__  # type: ignore[attr-defined]
task_counts: Table = TaskCount.__table__  # type: ignore[attr-defined]
