"""The task SQL. Every statement starts from the owner's rows, so another user's task is simply not found.

Statements are built once with bind parameters (per request only the values change). A write reads the task's
current state under its row lock and changes it in the same unit of work, so concurrent writers queue on the lock
and each one judges `If-Match` against the state it is really about to replace:

* PostgreSQL: one statement. `before` locks the row (`FOR UPDATE` waits for a concurrent writer, then returns
  the row as that writer left it), the UPDATE or DELETE runs only if `If-Match` allows that state (and, for an
  UPDATE, if a field really changes), and the statement returns both states.
* SQLite: the unit holds SQLite's one write lock from its first statement (`BEGIN IMMEDIATE`), so a read, the
  same judgement and a plain write are just as serialised.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Select,
    any_,
    asc,
    bindparam,
    case,
    delete,
    desc,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import BindParameter

from todo_api.db import Row, Session, utcnow
from todo_api.tasks.models import task_counts, tasks

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
NAMES = tuple(column.name for column in PUBLIC_COLUMNS)
ONE_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Precondition:
    """What `If-Match` allows: any state (no header, or `*`), or only the versions its tags name."""

    versions: tuple[int, ...] | None = None  # None: any

    def allows(self, version: int) -> bool:
        return self.versions is None or version in self.versions


ANY_STATE = Precondition()


def next_updated_at(previous: datetime, now: datetime) -> datetime:
    """`updated_at` moves forward on every change, even two changes within one clock tick (or a clock behind)."""
    return max(now, previous + ONE_TICK)


OWNER: BindParameter[str] = bindparam("owner")
TASK_ID: BindParameter[uuid.UUID] = bindparam("task_id")
_MINE = (tasks.c.user_id == OWNER, tasks.c.id == TASK_ID)
_GET = select(*PUBLIC_COLUMNS).where(*_MINE)
_INSERT = insert(tasks)
_DELETE_SQLITE = delete(tasks).where(*_MINE)


def _update_values(fields: frozenset[str]) -> dict[str, Any]:
    values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in sorted(fields)}
    if "title" in fields:
        values["title_key"] = bindparam("title_key")
    return values


def _locked_before() -> Any:
    return select(*PUBLIC_COLUMNS).where(*_MINE).with_for_update().cte("before")


def _allowed(before: Any) -> ColumnElement[bool]:
    versions = bindparam("versions", type_=ARRAY(Integer))
    return or_(bindparam("any_version", type_=Boolean), before.c.version == any_(versions))


def _both_states(before: Any, after: Any) -> Select[Any]:
    return select(
        *(before.c[name].label(f"before_{name}") for name in NAMES),
        *(after.c[name].label(f"after_{name}") for name in NAMES),
    ).select_from(before.outerjoin(after, true()))


@lru_cache(maxsize=16)
def _pg_change(fields: frozenset[str]) -> Select[Any]:
    """The row locked, judged and changed in one statement; returns `before_*` and `after_*` (null: not written).
    Parameters: owner, task_id, any_version, versions, now, new_<field> per field (and title_key with title)."""
    before = _locked_before()
    differs = or_(false(), *(before.c[name].is_distinct_from(bindparam(f"new_{name}")) for name in sorted(fields)))
    moment: BindParameter[datetime] = bindparam("now", type_=tasks.c.updated_at.type)
    after = (
        update(tasks)
        .where(tasks.c.id == before.c.id, _allowed(before), differs)
        .values(
            **_update_values(fields),
            version=before.c.version + 1,
            updated_at=func.greatest(moment, before.c.updated_at + literal_column("interval '1 microsecond'")),
        )
        .returning(*PUBLIC_COLUMNS)
        .cte("after")
    )
    return _both_states(before, after)


def _pg_delete() -> Select[Any]:
    before = _locked_before()
    gone = delete(tasks).where(tasks.c.id == before.c.id, _allowed(before)).returning(*PUBLIC_COLUMNS).cte("gone")
    return _both_states(before, gone)


_PG_DELETE = _pg_delete()


@lru_cache(maxsize=16)
def _sqlite_change(fields: frozenset[str]) -> Any:
    return (
        update(tasks)
        .where(*_MINE)
        .values(**_update_values(fields), version=bindparam("version"), updated_at=bindparam("updated_at"))
        .returning(*PUBLIC_COLUMNS)
    )


def _split(row: Row) -> tuple[Row | None, Row | None]:
    before = {name: row[f"before_{name}"] for name in NAMES}
    after = {name: row[f"after_{name}"] for name in NAMES} if row["after_id"] is not None else None
    return before, after


def _change_params(changes: Mapping[str, Any]) -> dict[str, Any]:
    params = {f"new_{name}": value for name, value in changes.items()}
    if "title" in changes:
        params["title_key"] = changes["title"].lower()
    return params


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


class TaskRepository:
    """The owner's tasks, on one session."""

    def __init__(self, session: Session, owner_id: str) -> None:
        self.session = session
        self.owner_id = owner_id

    async def _one(self, statement: Any, params: Mapping[str, Any]) -> Row | None:
        rows = await self.session.fetch(statement, params)
        return rows[0] if rows else None

    async def insert(self, values: Mapping[str, Any]) -> None:
        await self.session.fetch(_INSERT, {**values, "user_id": self.owner_id, "title_key": values["title"].lower()})

    async def get(self, task_id: uuid.UUID) -> Row | None:
        return await self._one(_GET, {"owner": self.owner_id, "task_id": task_id})

    async def page(
        self, sort_by: str, sort_order: str, completed: bool | None, q: str | None, limit: int, offset: int
    ) -> Sequence[Row]:
        """The rows of one page, each carrying `total` (one row with `id` null when the page is empty)."""
        statement = _page_statement(sort_by, sort_order, completed is not None, bool(q))
        params: dict[str, Any] = {"owner": self.owner_id, "limit": limit, "offset": offset}
        if completed is not None:
            params["completed"] = completed
        if q:
            params["pattern"] = _like_pattern(q)
        return await self.session.fetch(statement, params)

    def _judged(self, task_id: uuid.UUID, precondition: Precondition) -> dict[str, Any]:
        return {
            "owner": self.owner_id,
            "task_id": task_id,
            "any_version": precondition.versions is None,
            "versions": list(precondition.versions or ()),
        }

    async def change(
        self, task_id: uuid.UUID, changes: Mapping[str, Any], precondition: Precondition
    ) -> tuple[Row | None, Row | None]:
        """(the state before, the state after): (None, None) when there is no such task of the owner's; after is
        None when nothing was written (If-Match forbids it, or no field would change)."""
        if self.session.dialect == "postgresql":
            params = {**self._judged(task_id, precondition), **_change_params(changes), "now": utcnow()}
            row = await self._one(_pg_change(frozenset(changes)), params)
            return _split(row) if row is not None else (None, None)
        before = await self.get(task_id)
        if before is None or not precondition.allows(before["version"]):
            return before, None
        if all(before[name] == value for name, value in changes.items()):
            return before, None
        params = {
            **_change_params(changes),
            "owner": self.owner_id,
            "task_id": task_id,
            "version": before["version"] + 1,
            "updated_at": next_updated_at(before["updated_at"], utcnow()),
        }
        return before, await self._one(_sqlite_change(frozenset(changes)), params)

    async def delete(self, task_id: uuid.UUID, precondition: Precondition) -> tuple[Row | None, bool]:
        """(the state before, whether it was deleted)."""
        if self.session.dialect == "postgresql":
            row = await self._one(_PG_DELETE, self._judged(task_id, precondition))
            if row is None:
                return None, False
            before, gone = _split(row)
            return before, gone is not None
        before = await self.get(task_id)
        if before is None or not precondition.allows(before["version"]):
            return before, False
        await self.session.fetch(_DELETE_SQLITE, {"owner": self.owner_id, "task_id": task_id})
        return before, True
