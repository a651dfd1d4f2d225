"""The task rules. Every statement starts from the owner's rows, so another user's task is simply not found."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    Update,
    asc,
    bindparam,
    case,
    delete,
    desc,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.sql.elements import BindParameter

from todo_api import events
from todo_api.db import Row, Session, utcnow
from todo_api.errors import NotFound, PreconditionFailed
from todo_api.tasks.models import task_counts, tasks
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


def _next_timestamp(previous: datetime) -> datetime:
    # updated_at must move on every change, even two changes within one clock tick.
    return max(utcnow(), previous + timedelta(microseconds=1))


# Statements are built once with bind parameters: per request only the values change, which keeps SQLAlchemy's
# work (and ours) on the hot path to a minimum.
OWNER: BindParameter[str] = bindparam("owner")
TASK_ID: BindParameter[uuid.UUID] = bindparam("task_id")
_GET = select(*PUBLIC_COLUMNS).where(tasks.c.user_id == OWNER, tasks.c.id == TASK_ID)
_INSERT = insert(tasks)
_WRITE = (
    update(tasks)
    .where(tasks.c.user_id == OWNER, tasks.c.id == TASK_ID, tasks.c.version == bindparam("seen_version"))
    .values(
        title=bindparam("title"),
        title_key=bindparam("title_key"),
        description=bindparam("description"),
        completed=bindparam("completed"),
        updated_at=bindparam("updated_at"),
        version=bindparam("version"),
    )
    .returning(*PUBLIC_COLUMNS)
)
_DELETE = (
    delete(tasks)
    .where(tasks.c.user_id == OWNER, tasks.c.id == TASK_ID, tasks.c.version == bindparam("seen_version"))
    .returning(tasks.c.id)
)
_DELETE_NOW = delete(tasks).where(tasks.c.user_id == OWNER, tasks.c.id == TASK_ID).returning(*PUBLIC_COLUMNS)


@lru_cache(maxsize=8)
def _change_statement(fields: frozenset[str]) -> Update:
    """A change in one round trip, with no read first: the UPDATE writes only when one of `fields` differs (a
    write that changes nothing writes nothing) and the stored `updated_at` is before the new one (so it always
    moves forward). When it writes nothing, the caller takes the general way. Parameters: owner, task_id,
    new_<field> for each field, title_key (with title), now."""
    values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in fields}
    if "title" in fields:
        values["title_key"] = bindparam("title_key")
    differs = or_(*(tasks.c[name].is_distinct_from(bindparam(f"new_{name}")) for name in sorted(fields)))
    moment: BindParameter[datetime] = bindparam("now", type_=tasks.c.updated_at.type)
    return (
        update(tasks)
        .where(tasks.c.user_id == OWNER, tasks.c.id == TASK_ID, tasks.c.updated_at < moment, differs)
        .values(**values, updated_at=moment, version=tasks.c.version + 1)
        .returning(*PUBLIC_COLUMNS)
    )


@lru_cache(maxsize=64)
def _page_statement(sort_by: str, sort_order: str, by_completion: bool, by_text: bool) -> Select[Any]:
    """A page and the exact total in one round trip: the count subquery is joined to the page, so the total
    comes back even past the last page. Bind parameters: owner, completed, pattern, limit, offset."""
    filters: list[ColumnElement[bool]] = [tasks.c.user_id == OWNER]
    if by_completion:
        filters.append(tasks.c.completed == bindparam("completed"))
    if by_text:
        pattern: BindParameter[str] = bindparam("pattern")
        filters.append(tasks.c.title.ilike(pattern, escape="/") | tasks.c.description.ilike(pattern, escape="/"))
    column = SORT_COLUMNS[sort_by]
    direction = desc if sort_order == "desc" else asc
    counted = _count_statement(by_completion, by_text, filters).subquery("counted")
    page = (
        select(*PUBLIC_COLUMNS, column.label("sort_key"))
        .where(*filters)
        .order_by(direction(column), direction(tasks.c.id))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery("page")
    )
    return (
        select(counted.c.total, *(page.c[c.name] for c in PUBLIC_COLUMNS))
        .select_from(counted.outerjoin(page, true()))
        .order_by(direction(page.c.sort_key), direction(page.c.id))
    )


def _count_statement(by_completion: bool, by_text: bool, filters: list[ColumnElement[bool]]) -> Select[Any]:
    """The exact total: from the owner's counters (kept by triggers), unless a text search has to count rows."""
    if by_text:
        return select(func.count().label("total")).select_from(tasks).where(*filters)
    completed_only: BindParameter[bool] = bindparam("completed", type_=Boolean)
    counter = (
        case((completed_only, task_counts.c.completed), else_=task_counts.c.total - task_counts.c.completed)
        if by_completion
        else task_counts.c.total
    )
    # max() over at most one row: an owner with no counter row yet still gets a row, with 0.
    return select(func.coalesce(func.max(counter), 0).label("total")).where(task_counts.c.user_id == OWNER)


def _like_pattern(text: str) -> str:
    """`%` and `_` are literal in `q`: escape them (and the escape character) for LIKE."""
    return "%" + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


class TaskService:
    def __init__(self, session: Session, owner_id: str) -> None:
        self.session = session
        self.owner_id = owner_id

    async def _one(self, statement: Any, params: Mapping[str, Any]) -> Row | None:
        rows = await self.session.fetch(statement, params)
        return rows[0] if rows else None

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
        await self.session.fetch(_INSERT, values)
        task = TaskState(values)
        await events.task_created(self.session, task)  # the transaction's last statement (see events)
        return task

    async def get(self, task_id: uuid.UUID) -> TaskState:
        row = await self._one(_GET, {"owner": self.owner_id, "task_id": task_id})
        if row is None:
            raise NotFound("Task not found.")
        return TaskState(row)

    async def list(self, query: ListQuery) -> Page:
        completion = query.completion
        statement = _page_statement(query.sort_by, query.sort_order, completion is not None, bool(query.q))
        params: dict[str, Any] = {
            "owner": self.owner_id,
            "limit": query.page_size,
            "offset": (query.page - 1) * query.page_size,
        }
        if completion is not None:
            params["completed"] = completion
        if query.q:
            params["pattern"] = _like_pattern(query.q)
        rows = await self.session.fetch(statement, params)
        total = rows[0]["total"] if rows else 0
        items = [TaskState(row) for row in rows if row["id"] is not None]
        return Page(items, total, query.page, query.page_size)

    async def _writable(self, task_id: uuid.UUID, if_match: str | None) -> TaskState:
        """The task as it is now, once `If-Match` allows writing it: 404 first, then 412 with the current ETag."""
        current = await self.get(task_id)
        if not if_match_allows(if_match, current.etag):
            raise PreconditionFailed("If-Match does not match the task's current ETag.", headers={"ETag": current.etag})
        return current

    async def change(self, task_id: uuid.UUID, changes: Mapping[str, Any], if_match: str | None) -> TaskState:
        """Apply `changes` (a subset of title, description, completed) unless `If-Match` forbids it.

        A write that changes nothing writes nothing. Concurrent writers are serialised by the version check in
        the UPDATE itself, so of two carrying the same ETag exactly one wins."""
        if changes and if_match is None and self.session.outbox is None:
            # The common case needs no read first (the event of a change, when recorded, needs the state before).
            params = {f"new_{name}": value for name, value in changes.items()}
            if "title" in changes:
                params["title_key"] = changes["title"].lower()
            params.update(owner=self.owner_id, task_id=task_id, now=utcnow())
            row = await self._one(_change_statement(frozenset(changes)), params)
            if row is not None:
                return TaskState(row)
            # Nothing written: no such task, nothing to change, or a clock behind; the general way sorts it out.
        for _ in range(_MAX_WRITE_ATTEMPTS):
            current = await self._writable(task_id, if_match)
            if all(current.row[name] == value for name, value in changes.items()):
                return current
            state = {name: changes.get(name, current.row[name]) for name in EDITABLE}
            row = await self._one(
                _WRITE,
                {
                    **state,
                    "title_key": state["title"].lower(),
                    "updated_at": _next_timestamp(current.row["updated_at"]),
                    "version": current.row["version"] + 1,
                    "owner": self.owner_id,
                    "task_id": task_id,
                    "seen_version": current.row["version"],
                },
            )
            if row is not None:
                changed = TaskState(row)
                await events.task_changed(self.session, current, changed)
                return changed
            # Someone else wrote first: read again, and let If-Match (if any) judge the new state.
        raise PreconditionFailed("The task kept changing; try again.")

    async def delete(self, task_id: uuid.UUID, if_match: str | None) -> TaskState:
        if if_match is None and self.session.outbox is None:
            row = await self._one(_DELETE_NOW, {"owner": self.owner_id, "task_id": task_id})
            if row is None:
                raise NotFound("Task not found.")
            return TaskState(row)
        for _ in range(_MAX_WRITE_ATTEMPTS):
            current = await self._writable(task_id, if_match)
            params = {"owner": self.owner_id, "task_id": task_id, "seen_version": current.row["version"]}
            if await self._one(_DELETE, params) is not None:
                await events.task_deleted(self.session, current)
                return current
        raise PreconditionFailed("The task kept changing; try again.")
