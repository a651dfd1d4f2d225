"""Recording events: one outbox row per change, inserted by the transaction that makes the change.

The services hold an `Outbox` when events are on (`EVENTS_PUBLISHER` is not `none`) and call its `task_created`,
`task_changed`, `task_deleted` or `user_signed_up` right after their write, as the last statement of the unit of
work (a transaction: see `todo_api.db.pool`). With events off they hold none: no SQL, no serialization.

Per-user commit order, which the relay relies on (see `todo_api.events.relay`):

* SQLite has one writer at a time; the row's `seq` (the rowid) is taken under the write lock, so `seq` order is
  commit order, for everyone.
* On PostgreSQL, a sequence number is handed out at INSERT time, and two transactions may commit in the other
  order. So the INSERT first takes a transaction-scoped advisory lock on the owner
  (`pg_advisory_xact_lock(space, hashtext(owner))`), in the same statement, before the row (and its `seq`) is
  made. A second transaction of the same owner waits there until the first has committed or rolled back, and only
  then draws its `seq`: for one owner, `seq` order is commit order, and a relay that sees a row of an owner also
  sees every earlier committed row of that owner. The lock is held only from this INSERT (the transaction's last
  statement) to COMMIT, and only against the same owner's concurrent writes; different owners never wait (a hash
  collision merely makes two owners share a queue).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import Uuid, bindparam, insert, text

from todo_api.db import Session, UTCDateTime, utcnow
from todo_api.events.models import outbox

SPECVERSION = "1.0"
DATA_CONTENT_TYPE = "application/json"
TYPE_PREFIX = "todo."
# Key space of the per-owner advisory locks (the two-int form, which never collides with the relay's bigint lock).
OWNER_LOCK_SPACE = 0x7D0E  # "todo events"

_INSERT_SQLITE = insert(outbox)
_INSERT_POSTGRES = text(
    "WITH owner_turn AS MATERIALIZED ("
    "  SELECT pg_advisory_xact_lock(CAST(:lock_space AS integer), hashtext(CAST(:partition_key AS text)))"
    ") "
    "INSERT INTO event_outbox (event_id, partition_key, event_type, payload, created_at) "
    "SELECT CAST(:event_id AS uuid), CAST(:partition_key AS text), CAST(:event_type AS text), "
    "CAST(:payload AS text), CAST(:created_at AS timestamptz) FROM owner_turn"
).bindparams(
    bindparam("lock_space", OWNER_LOCK_SPACE),
    bindparam("event_id", type_=Uuid()),
    bindparam("created_at", type_=UTCDateTime()),
)


_FOLLOWERS = frozenset({"updated_at", "completed_at"})  # fields the API moves along with a change


class TaskLike(Protocol):
    """What the task service hands over (its TaskState): the row and the resource as the API returns it."""

    def public(self) -> dict[str, Any]: ...


class AccountLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


def rfc3339(moment: datetime) -> str:
    """UTC, six fractional digits, `Z`: 2026-11-26T09:30:00.123456Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Outbox:
    """Records changes as CloudEvents: one outbox row each, inserted on the caller's session, in its unit of work
    (the services hold one when events are on, and call it right after their write)."""

    def __init__(self, source: str, traceparent: Callable[[], str | None] | None = None) -> None:
        self.source = source
        self._traceparent = traceparent  # with tracing on: the W3C traceparent of the request recording an event

    def cloud_event(self, kind: str, subject: str, owner: str, data: dict[str, Any]) -> dict[str, Any]:
        event = {
            "specversion": SPECVERSION,
            "id": str(uuid.uuid4()),
            "source": self.source,
            "type": TYPE_PREFIX + kind,
            "subject": subject,
            "time": rfc3339(utcnow()),
            "datacontenttype": DATA_CONTENT_TYPE,
            "partitionkey": owner,  # the CloudEvents partitioning extension
            "data": data,
        }
        if self._traceparent is not None and (traceparent := self._traceparent()) is not None:
            event["traceparent"] = traceparent  # the CloudEvents distributed-tracing extension
        return event

    async def record(
        self, session: Session, kind: str, subject: str, owner: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        event = self.cloud_event(kind, subject, owner, data)
        await session.fetch(
            _INSERT_POSTGRES if session.dialect == "postgresql" else _INSERT_SQLITE,
            {
                "event_id": uuid.UUID(event["id"]),
                "partition_key": owner,
                "event_type": event["type"],
                "payload": orjson.dumps(event).decode(),
                "created_at": utcnow(),
            },
        )
        return event

    async def task_created(self, session: Session, task: TaskLike) -> None:
        data = task.public()
        await self.record(session, "task.created", data["id"], data["user_id"], data)

    async def task_changed(self, session: Session, before: TaskLike, after: TaskLike) -> None:
        """`completed`/`reopened` when `completed` is all that changed (`completed_at` and `updated_at` move with
        every such change and do not count), else `updated`."""
        old, data = before.public(), after.public()
        changed = {name for name, value in data.items() if name not in _FOLLOWERS and old.get(name) != value}
        kind = "task.updated"
        if changed == {"completed"}:
            kind = "task.completed" if data["completed"] else "task.reopened"
        await self.record(session, kind, data["id"], data["user_id"], data)

    async def task_deleted(self, session: Session, last_state: TaskLike) -> None:
        data = last_state.public()
        await self.record(session, "task.deleted", data["id"], data["user_id"], data)

    async def user_signed_up(self, session: Session, account: AccountLike) -> None:
        data = {
            "id": account.id,
            "username": account.username,
            "email": account.email,
            "created_at": account.created_at.isoformat(timespec="microseconds"),
        }
        await self.record(session, "user.signed_up", account.id, account.id, data)
