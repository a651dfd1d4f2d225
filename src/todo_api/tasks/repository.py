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
    Text,
    any_,
    asc,
    bindparam,
    case,
    delete,
    desc,
    exists,
    false,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import BindParameter

from todo_api.db import Row, Session, utcnow
from todo_api.tasks.models import task_counts, tasks

PUBLIC_COLUMNS = (
    tasks.c.id,
    tasks.c.user_id,
    tasks.c.title,
    tasks.c.description,
    tasks.c.completed,
    tasks.c.completed_at,
    tasks.c.priority,
    tasks.c.due_at,
    tasks.c.tags,
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
    if "completed" in fields:
        values["completed_at"] = bindparam("completed_at")  # SQLite; PostgreSQL decides in the statement
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


@lru_cache(maxsize=64)  # one per set of editable fields (6 fields: 63 sets)
def _pg_change(fields: frozenset[str]) -> Select[Any]:
    """The row locked, judged and changed in one statement; returns `before_*` and `after_*` (null: not written).
    Parameters: owner, task_id, any_version, versions, now, new_<field> per field (and title_key with title)."""
    before = _locked_before()
    differs = or_(false(), *(before.c[name].is_distinct_from(bindparam(f"new_{name}")) for name in sorted(fields)))
    moment: BindParameter[datetime] = bindparam("now", type_=tasks.c.updated_at.type)
    updated_at = func.greatest(moment, before.c.updated_at + literal_column("interval '1 microsecond'"))
    values = _update_values(fields)
    if "completed" in fields:
        # The time `completed` last became true: kept while it stays true, gone while it is false.
        new_completed: BindParameter[bool] = bindparam("new_completed", type_=Boolean)
        values["completed_at"] = case(
            (~new_completed, null()), (before.c.completed, before.c.completed_at), else_=updated_at
        )
    after = (
        update(tasks)
        .where(tasks.c.id == before.c.id, _allowed(before), differs)
        .values(**values, version=before.c.version + 1, updated_at=updated_at)
        .returning(*PUBLIC_COLUMNS)
        .cte("after")
    )
    return _both_states(before, after)


def _pg_delete() -> Select[Any]:
    before = _locked_before()
    gone = delete(tasks).where(tasks.c.id == before.c.id, _allowed(before)).returning(*PUBLIC_COLUMNS).cte("gone")
    return _both_states(before, gone)


_PG_DELETE = _pg_delete()


@lru_cache(maxsize=64)  # one per set of editable fields (6 fields: 63 sets)
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


# The column each listing sorts by. due_at sorts by a key with a sentinel for "no due date" that comes last in the
# direction asked for, the same expressions as migration 0004's indexes (so the sort is an index scan).
SORT_COLUMNS: dict[str, ColumnElement[Any]] = {
    "created_at": tasks.c.created_at,
    "updated_at": tasks.c.updated_at,
    "title": tasks.c.title_key,
    "completed": tasks.c.completed,
    "priority": tasks.c.priority,
}
_DUE_SENTINELS = {
    ("postgresql", "asc"): "'infinity'::timestamptz",
    ("postgresql", "desc"): "'-infinity'::timestamptz",
    ("sqlite", "asc"): "'9999-12-31 23:59:59.999999'",
    ("sqlite", "desc"): "''",
}


def _due_key(due: ColumnElement[Any], dialect: str, sort_order: str) -> ColumnElement[Any]:
    return func.coalesce(due, literal_column(_DUE_SENTINELS[dialect, sort_order]))


def sort_key(dialect: str, sort_by: str, sort_order: str) -> ColumnElement[Any]:
    if sort_by == "due_at":
        return _due_key(tasks.c.due_at, dialect, sort_order)
    return SORT_COLUMNS[sort_by]


@dataclass(frozen=True, slots=True)
class Filters:
    """A listing's filters, all combined with AND (None or empty: not filtered by it)."""

    completed: bool | None = None
    q: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    due_min: datetime | None = None
    due_max: datetime | None = None

    @property
    def counted_by_triggers(self) -> bool:
        """Whether the owner's counters (migration 0003) know this total: unfiltered, or by `completed` only."""
        return not (self.q or self.priority is not None or self.tags or self.due_min or self.due_max)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What decides a listing statement's SQL (its values are parameters)."""

    dialect: str
    sort_by: str
    sort_order: str
    completed: bool
    q: bool
    priority: bool
    tags: int
    due_min: bool
    due_max: bool
    after: bool  # a cursor: only what sorts after (key, id)


def _filters(shape: _Shape) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = [tasks.c.user_id == OWNER]
    if shape.completed:
        filters.append(tasks.c.completed == bindparam("completed"))
    if shape.q:
        pattern: BindParameter[str] = bindparam("pattern")
        filters.append(tasks.c.title.ilike(pattern, escape="/") | tasks.c.description.ilike(pattern, escape="/"))
    if shape.priority:
        filters.append(tasks.c.priority == bindparam("priority"))
    if shape.tags and shape.dialect == "postgresql":
        filters.append(tasks.c.tags.op("@>")(bindparam("tags", type_=ARRAY(Text))))  # the GIN index
    elif shape.tags:
        for index in range(shape.tags):  # SQLite keeps tags as a JSON array
            each = func.json_each(tasks.c.tags).table_valued("value", name=f"tag_{index}")
            filters.append(
                exists(select(literal_column("1")).select_from(each).where(each.c.value == bindparam(f"tag_{index}")))
            )
    due_type = tasks.c.due_at.type
    if shape.due_min or shape.due_max:
        # On the ascending due-date key, so the range is a scan of that index for the owner; tasks without a due
        # date (whose key is the sentinel) are left out explicitly.
        key = _due_key(tasks.c.due_at, shape.dialect, "asc")
        filters.append(tasks.c.due_at.is_not(None))
        if shape.due_min:
            filters.append(key >= bindparam("due_min", type_=due_type))
        if shape.due_max:
            filters.append(key < bindparam("due_max", type_=due_type))
    return filters


@lru_cache(maxsize=512)
def _page_statement(shape: _Shape) -> Select[Any]:
    """A page (one row more than asked, to tell whether another follows) and the exact total, in one round trip:
    the count is joined to the page, so the total comes back even past the last page. Parameters: owner, the
    filters', limit, offset, and with a cursor after_key and after_id."""
    filters = _filters(shape)
    direction = desc if shape.sort_order == "desc" else asc
    key = sort_key(shape.dialect, shape.sort_by, shape.sort_order)
    where = list(filters)
    if shape.after:
        after_key: ColumnElement[Any] = bindparam("after_key", type_=key.type)
        if shape.sort_by == "due_at":
            after_key = _due_key(bindparam("after_key", type_=tasks.c.due_at.type), shape.dialect, shape.sort_order)
        after = tuple_(after_key, bindparam("after_id", type_=tasks.c.id.type))
        where.append(tuple_(key, tasks.c.id) > after if shape.sort_order == "asc" else tuple_(key, tasks.c.id) < after)
    counted = _count_statement(shape, filters).subquery("counted")
    page = (
        select(*PUBLIC_COLUMNS, key.label("sort_key"))
        .where(*where)
        .order_by(direction(key), direction(tasks.c.id))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery("page")
    )
    return (
        select(counted.c.total, *(page.c[c.name] for c in PUBLIC_COLUMNS))
        .select_from(counted.outerjoin(page, true()))
        .order_by(direction(page.c.sort_key), direction(page.c.id))
    )


def _count_statement(shape: _Shape, filters: list[ColumnElement[bool]]) -> Select[Any]:
    """The exact total: from the owner's counters (kept by triggers) when they know it, else counted."""
    if shape.q or shape.priority or shape.tags or shape.due_min or shape.due_max:
        return select(func.count().label("total")).select_from(tasks).where(*filters)
    completed_only: BindParameter[bool] = bindparam("completed", type_=Boolean)
    counter = (
        case((completed_only, task_counts.c.completed), else_=task_counts.c.total - task_counts.c.completed)
        if shape.completed
        else task_counts.c.total
    )
    # max() over at most one row: an owner with no counter row yet still gets a row, with 0.
    return select(func.coalesce(func.max(counter), 0).label("total")).where(task_counts.c.user_id == OWNER)


_TAGS = {
    "postgresql": text(
        "SELECT tag AS name, count(*) AS count FROM tasks, unnest(tasks.tags) AS tag WHERE tasks.user_id = :owner "
        'GROUP BY tag ORDER BY tag COLLATE "C"'
    ),
    "sqlite": text(
        "SELECT json_each.value AS name, count(*) AS count FROM tasks, json_each(tasks.tags) "
        "WHERE tasks.user_id = :owner GROUP BY json_each.value ORDER BY json_each.value"
    ),
}
_CLEAR_COMPLETED = delete(tasks).where(tasks.c.user_id == OWNER, tasks.c.completed).returning(*PUBLIC_COLUMNS)


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
        self,
        sort_by: str,
        sort_order: str,
        filters: Filters,
        limit: int,
        offset: int = 0,
        after: tuple[Any, uuid.UUID] | None = None,
    ) -> Sequence[Row]:
        """Up to `limit` rows of one page, each carrying `total` (one row with `id` null when the page is empty):
        from `offset`, or, keyset-style, after the task whose sort key and id `after` gives."""
        shape = _Shape(
            self.session.dialect,
            sort_by,
            sort_order,
            completed=filters.completed is not None,
            q=bool(filters.q),
            priority=filters.priority is not None,
            tags=len(filters.tags),
            due_min=filters.due_min is not None,
            due_max=filters.due_max is not None,
            after=after is not None,
        )
        params: dict[str, Any] = {"owner": self.owner_id, "limit": limit, "offset": offset}
        if filters.completed is not None:
            params["completed"] = filters.completed
        if filters.q:
            params["pattern"] = _like_pattern(filters.q)
        if filters.priority is not None:
            params["priority"] = filters.priority
        if filters.tags and shape.dialect == "postgresql":
            params["tags"] = list(filters.tags)
        else:
            params.update({f"tag_{index}": tag for index, tag in enumerate(filters.tags)})
        if filters.due_min is not None:
            params["due_min"] = filters.due_min
        if filters.due_max is not None:
            params["due_max"] = filters.due_max
        if after is not None:
            params["after_key"], params["after_id"] = after
        return await self.session.fetch(_page_statement(shape), params)

    async def tag_counts(self) -> Sequence[Row]:
        return await self.session.fetch(_TAGS[self.session.dialect], {"owner": self.owner_id})

    async def delete_completed(self) -> Sequence[Row]:
        """Every completed task of the owner's, deleted in one statement; their last states."""
        return await self.session.fetch(_CLEAR_COMPLETED, {"owner": self.owner_id})

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
        updated_at = next_updated_at(before["updated_at"], utcnow())
        params = {
            **_change_params(changes),
            "owner": self.owner_id,
            "task_id": task_id,
            "version": before["version"] + 1,
            "updated_at": updated_at,
        }
        if "completed" in changes:
            kept = before["completed_at"] if before["completed"] else updated_at
            params["completed_at"] = kept if changes["completed"] else None
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
