"""The outbox table: one row per event, written in the transaction of the change it describes."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Integer, Table, Text, text
from sqlmodel import Field, SQLModel

from todo_api.db import UTCDateTime

# BIGINT on PostgreSQL (an identity), INTEGER PRIMARY KEY on SQLite (the rowid, assigned under the write lock).
Sequence = BigInteger().with_variant(Integer(), "sqlite")


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "event_outbox"
    __table_args__ = (
        # What the relay reads: the unpublished rows in seq order. Partial, so it stays tiny however many
        # published rows wait for pruning.
        Index(
            "ix_event_outbox_pending",
            "seq",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
        Index("ix_event_outbox_published_at", "published_at"),  # pruning
    )

    seq: int | None = Field(default=None, sa_column=Column(Sequence, primary_key=True, autoincrement=True))
    event_id: uuid.UUID
    partition_key: str = Field(max_length=255)  # the owner's id: Kafka partition key, Redis `key`
    event_type: str = Field(max_length=64)
    # The CloudEvent, serialized once at write time: every retry sends the same bytes (and so the same id).
    payload: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


outbox: Table = OutboxEvent.__table__  # type: ignore[attr-defined]
