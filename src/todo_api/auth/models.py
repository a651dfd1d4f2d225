from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Table, func
from sqlmodel import Field, SQLModel

from todo_api.db import UTCDateTime


class User(SQLModel, table=True):
    """An account created through this API's signup. Better Auth users have no row here."""

    __tablename__ = "users"
    __table_args__ = (
        # Uniqueness regardless of case is the database's job, so racing signups cannot both win.
        Index("uq_users_username_lower", func.lower(Column("username")), unique=True),
        Index("uq_users_email_lower", func.lower(Column("email")), unique=True),
    )

    id: str = Field(primary_key=True, max_length=36)
    username: str = Field(max_length=32)
    email: str = Field(max_length=320)
    password_hash: str = Field(max_length=72)
    created_at: datetime = Field(sa_type=UTCDateTime)


users: Table = User.__table__  # type: ignore[attr-defined]
