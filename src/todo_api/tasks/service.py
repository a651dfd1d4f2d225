"""The task rules: what a write may do (404, then If-Match's 412), what it records, and how a task looks outside.

The SQL lives in `repository`; this module never builds HTTP responses, it raises the API's errors."""

from __future__ import annotations

import functools
import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from todo_api.db import Session, utcnow
from todo_api.errors import NotFound, PreconditionFailed
from todo_api.events import Outbox
from todo_api.tasks.cursors import Cursors, Position, listing_fingerprint
from todo_api.tasks.models import PRIORITIES
from todo_api.tasks.repository import ANY_STATE, Filters, Precondition, TaskRepository
from todo_api.tasks.schemas import ListQuery, task_body


def _digest(task_id: uuid.UUID, version: int) -> str:
    return hashlib.blake2b(task_id.bytes + version.to_bytes(8, "big"), digest_size=8).hexdigest()


def etag(task_id: uuid.UUID, version: int) -> str:
    """A strong validator of one task's state: it changes with every write, and differs between tasks. It names
    the version it stands for, so `If-Match` can be judged by the database against the locked row."""
    return f'"{version}-{_digest(task_id, version)}"'


_ENTITY_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')


def precondition(header: str | None, task_id: uuid.UUID) -> Precondition:
    """RFC 9110 §13.1.1: `If-Match: *` or a list of entity tags, compared strongly (weak tags never match). A tag
    that is none of this task's ETags matches no state at all."""
    if header is None or header.strip() == "*":
        return ANY_STATE
    versions: list[int] = []
    for match in _ENTITY_TAG.finditer(header):
        weak, opaque = match.groups()
        version, _, digest = opaque.partition("-")
        if weak or not version.isdigit() or len(version) > 18:
            continue
        if digest == _digest(task_id, int(version)):
            versions.append(int(version))
    return Precondition(tuple(versions))


@dataclass(frozen=True, slots=True)
class TaskState:
    row: Mapping[str, Any]

    @property
    def etag(self) -> str:
        return etag(self.row["id"], self.row["version"])

    def public(self) -> dict[str, Any]:
        return task_body(self.row)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[TaskState]
    total: int
    page: int | None  # None in a cursor walk
    page_size: int
    next_cursor: str | None

    def public(self) -> dict[str, Any]:
        return {
            "items": [item.public() for item in self.items],
            "total": self.total,
            "page": self.page,
            "page_size": self.page_size,
            "pages": math.ceil(self.total / self.page_size),
            "next_cursor": self.next_cursor,
        }


class TaskService:
    """One owner's tasks, in one unit of work; `events` records what changed (None: events are off)."""

    def __init__(
        self, session: Session, owner_id: str, events: Outbox | None = None, cursors: Cursors | None = None
    ) -> None:
        self.session = session
        self.tasks = TaskRepository(session, owner_id)
        self.events = events
        self.cursors = cursors

    async def create(self, fields: Mapping[str, Any]) -> TaskState:
        now = utcnow()
        completed = fields.get("completed", False)
        values = {
            "id": uuid.uuid4(),
            "user_id": self.tasks.owner_id,
            "title": fields["title"],
            "description": fields.get("description"),
            "completed": completed,
            "completed_at": now if completed else None,
            "priority": PRIORITIES.index(fields.get("priority", "none")),
            "due_at": fields.get("due_at"),
            "tags": list(fields.get("tags", ())),
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        await self.tasks.insert(values)
        task = TaskState(values)
        if self.events is not None:
            await self.events.task_created(self.session, task)
        return task

    async def get(self, task_id: uuid.UUID) -> TaskState:
        row = await self.tasks.get(task_id)
        if row is None:
            raise NotFound("Task not found.")
        return TaskState(row)

    async def list(self, query: ListQuery) -> Page:
        filters = Filters(
            completed=query.completion,
            q=query.q or None,
            priority=None if query.priority is None else PRIORITIES.index(query.priority),
            tags=tuple(dict.fromkeys(query.tag)),
            due_min=query.due_min,
            due_max=query.due_max,
        )
        cursors = self.cursors
        assert cursors is not None, "a listing needs the cursor signer"

        @functools.cache
        def listing() -> str:  # what a cursor is bound to; computed once, and only when a cursor is read or made
            parameters = query.model_dump(exclude={"page", "cursor"}, mode="json")
            parameters["tag"] = sorted(filters.tags)  # the same filter in any order is the same listing
            return listing_fingerprint(self.tasks.owner_id, parameters)

        after = None
        if query.cursor is not None:
            position = cursors.decode(query.cursor, listing(), query.sort_by)
            after = (position.key, position.task_id)
        offset = 0 if after is not None else (query.page - 1) * query.page_size
        rows = await self.tasks.page(query.sort_by, query.sort_order, filters, query.page_size + 1, offset, after)
        total = rows[0]["total"] if rows else 0
        items = [TaskState(row) for row in rows if row["id"] is not None]
        next_cursor = None
        if len(items) > query.page_size:
            items = items[: query.page_size]
            last = items[-1].row
            key = last["title"].lower() if query.sort_by == "title" else last[query.sort_by]
            next_cursor = cursors.encode(listing(), query.sort_by, Position(key, last["id"]))
        return Page(items, total, None if after is not None else query.page, query.page_size, next_cursor)

    async def tag_counts(self) -> Sequence[dict[str, Any]]:
        return [{"name": row["name"], "count": row["count"]} for row in await self.tasks.tag_counts()]

    async def clear_completed(self) -> int:
        """Delete every completed task of the owner's, in one unit of work, with an event for each."""
        deleted = [TaskState(row) for row in await self.tasks.delete_completed()]
        if self.events is not None:
            for task in deleted:
                await self.events.task_deleted(self.session, task)
        return len(deleted)

    async def change(self, task_id: uuid.UUID, changes: Mapping[str, Any], if_match: str | None) -> TaskState:
        """Apply `changes` (editable fields) unless `If-Match` forbids it. A write that changes nothing writes
        nothing. Writers of one task queue on its row lock, so every unconditional write applies (last writer
        wins), and of writers carrying the same ETag exactly one succeeds."""
        condition = precondition(if_match, task_id)
        if "priority" in changes:
            changes = {**changes, "priority": PRIORITIES.index(changes["priority"])}
        before, after = await self.tasks.change(task_id, changes, condition)
        current = self._writable(before, condition)
        if after is None:
            return current  # nothing to change
        changed = TaskState(after)
        if self.events is not None:
            await self.events.task_changed(self.session, current, changed)
        return changed

    async def delete(self, task_id: uuid.UUID, if_match: str | None) -> TaskState:
        condition = precondition(if_match, task_id)
        before, deleted = await self.tasks.delete(task_id, condition)
        current = self._writable(before, condition)
        if not deleted:
            raise PreconditionFailed("If-Match does not match the task's current ETag.", headers={"ETag": current.etag})
        if self.events is not None:
            await self.events.task_deleted(self.session, current)
        return current

    @staticmethod
    def _writable(before: Mapping[str, Any] | None, condition: Precondition) -> TaskState:
        """The locked state a write was judged against: 404 first, then 412 (with its ETag) when If-Match forbade
        writing it."""
        if before is None:
            raise NotFound("Task not found.")
        current = TaskState(before)
        if not condition.allows(before["version"]):
            raise PreconditionFailed("If-Match does not match the task's current ETag.", headers={"ETag": current.etag})
        return current
