"""The task rules. Every statement starts from the owner's rows, so another user's task is simply not found."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, asc, delete, desc, func, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from todo_api.db import utcnow
from todo_api.errors import NotFound, PreconditionFailed
from todo_api.tasks.models import tasks
from todo_api.tasks.schemas import ListQuery

EDITABLE = ("title", "description", "completed")
SORT_COLUMNS = {
    "created_at": tasks.c.created_at,
    "updated_at": tasks.c.updated_at,
    "title": tasks.c.title_key,
    "completed": tasks.c.completed,
}
PUBLIC_COLUMNS = (
    tasks.c.id,
    tasks.c.user_id,
    tasks.c.title,
    tasks.c.description,
    tasks.c.completed,
    tasks.c.version,
    tasks.c.created_at,
    tasks.c.updated_at,
)
_MAX_WRITE_ATTEMPTS = 5


def etag(task_id: uuid.UUID, version: int) -> str:
    """A strong validator of one task's state: it changes with every write, and differs between tasks."""
    digest = hashlib.blake2b(task_id.bytes + version.to_bytes(8, "big"), digest_size=10).hexdigest()
    return f'"{digest}"'


def if_match_allows(header: str | None, current: str) -> bool:
    """RFC 9110 §13.1.1: `*` or a list of entity tags; weak tags never match (strong comparison)."""
    if header is None:
        return True
    header = header.strip()
    if header == "*":
        return True
    return any(tag.strip() == current for tag in header.split(",") if not tag.strip().startswith("W/"))


@dataclass(frozen=True, slots=True)
class TaskState:
    row: Mapping[str, Any]

    @property
    def etag(self) -> str:
        return etag(self.row["id"], self.row["version"])

    def public(self) -> dict[str, Any]:
        row = self.row
        return {
            "id": str(row["id"]),
            "user_id": row["user_id"],
            "title": row["title"],
            "description": row["description"],
            "completed": row["completed"],
            "created_at": row["created_at"].isoformat(timespec="microseconds"),
            "updated_at": row["updated_at"].isoformat(timespec="microseconds"),
        }


@dataclass(frozen=True, slots=True)
class Page:
    items: list[TaskState]
    total: int
    page: int
    page_size: int

    def public(self) -> dict[str, Any]:
        return {
            "items": [item.public() for item in self.items],
            "total": self.total,
            "page": self.page,
            "page_size": self.page_size,
            "pages": math.ceil(self.total / self.page_size),
        }


def _state(row: Row[*tuple[Any, ...]]) -> TaskState:
    return TaskState(row._asdict())


def _next_timestamp(previous: datetime) -> datetime:
    # updated_at must move on every change, even two changes within one clock tick.
    return max(utcnow(), previous + timedelta(microseconds=1))


class TaskService:
    def __init__(self, session: AsyncSession, owner_id: str) -> None:
        self.session = session
        self.owner_id = owner_id

    def _owned(self, *conditions: ColumnElement[bool]) -> list[ColumnElement[bool]]:
        return [tasks.c.user_id == self.owner_id, *conditions]

    async def create(self, fields: Mapping[str, Any]) -> TaskState:
        now = utcnow()
        values = {
            "id": uuid.uuid4(),
            "user_id": self.owner_id,
            "title": fields["title"],
            "title_key": fields["title"].lower(),
            "description": fields.get("description"),
            "completed": fields.get("completed", False),
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        await self.session.execute(insert(tasks).values(values))
        return TaskState(values)

    async def get(self, task_id: uuid.UUID) -> TaskState:
        row = (await self.session.execute(select(*PUBLIC_COLUMNS).where(*self._owned(tasks.c.id == task_id)))).first()
        if row is None:
            raise NotFound("Task not found.")
        return _state(row)

    async def list(self, query: ListQuery) -> Page:
        """A page and the exact total in one round trip (the count rides along even past the last page)."""
        filters = self._owned()
        if query.completed is not None:
            filters.append(tasks.c.completed == query.completed)
        if query.q:
            filters.append(
                tasks.c.title.icontains(query.q, autoescape=True)
                | tasks.c.description.icontains(query.q, autoescape=True)
            )
        column = SORT_COLUMNS[query.sort_by]
        direction = desc if query.sort_order == "desc" else asc

        counted = select(func.count().label("total")).select_from(tasks).where(*filters).subquery("counted")
        page = (
            select(*PUBLIC_COLUMNS, column.label("sort_key"))
            .where(*filters)
            .order_by(direction(column), direction(tasks.c.id))
            .limit(query.page_size)
            .offset((query.page - 1) * query.page_size)
            .subquery("page")
        )
        statement = (
            select(counted.c.total, *(page.c[c.name] for c in PUBLIC_COLUMNS))
            .select_from(counted.outerjoin(page, true()))
            .order_by(direction(page.c.sort_key), direction(page.c.id))
        )
        rows = (await self.session.execute(statement)).all()
        total = rows[0].total if rows else 0
        items = [_state(row) for row in rows if row.id is not None]
        return Page(items, total, query.page, query.page_size)

    async def change(self, task_id: uuid.UUID, changes: Mapping[str, Any], if_match: str | None) -> TaskState:
        """Apply `changes` (a subset of title, description, completed) unless `If-Match` forbids it.

        A write that changes nothing writes nothing. Concurrent writers are serialised by the version check in
        the UPDATE itself, so of two carrying the same ETag exactly one wins."""
        for _ in range(_MAX_WRITE_ATTEMPTS):
            current = await self.get(task_id)
            if not if_match_allows(if_match, current.etag):
                raise PreconditionFailed(
                    "If-Match does not match the task's current ETag.", headers={"ETag": current.etag}
                )
            values = {name: value for name, value in changes.items() if current.row[name] != value}
            if not values:
                return current
            if "title" in values:
                values["title_key"] = values["title"].lower()
            values["updated_at"] = _next_timestamp(current.row["updated_at"])
            values["version"] = current.row["version"] + 1
            row = (
                await self.session.execute(
                    update(tasks)
                    .where(*self._owned(tasks.c.id == task_id, tasks.c.version == current.row["version"]))
                    .values(values)
                    .returning(*PUBLIC_COLUMNS)
                )
            ).first()
            if row is not None:
                return _state(row)
            # Someone else wrote first: read again, and let If-Match (if any) judge the new state.
        raise PreconditionFailed("The task kept changing; try again.")

    async def delete(self, task_id: uuid.UUID, if_match: str | None) -> TaskState:
        for _ in range(_MAX_WRITE_ATTEMPTS):
            current = await self.get(task_id)
            if not if_match_allows(if_match, current.etag):
                raise PreconditionFailed(
                    "If-Match does not match the task's current ETag.", headers={"ETag": current.etag}
                )
            result = await self.session.execute(
                delete(tasks)
                .where(*self._owned(tasks.c.id == task_id, tasks.c.version == current.row["version"]))
                .returning(tasks.c.id)
            )
            if result.first() is not None:
                return current
        raise PreconditionFailed("The task kept changing; try again.")
