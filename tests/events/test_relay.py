"""The relay: nothing lost when it dies mid-batch, one active relay at a time, per-user order kept."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Account, AppClient, create_task, sign_up
from tests.events.conftest import (
    Relays,
    events_settings,
    eventually,
    outbox_rows,
    pending_count,
    stream_entries,
    wait_for_stream,
)
from todo_api.db import SqlAlchemySession, utcnow
from todo_api.events.models import outbox
from todo_api.events.outbox import Outbox
from todo_api.events.publishers import PendingEvent, Publisher


class Stalling:
    """A publisher that gets the first `after` events of its first batch out, then hangs (until killed)."""

    name = "stalling"

    def __init__(self, inner: Publisher, after: int) -> None:
        self.inner = inner
        self.after = after
        self.stalled = asyncio.Event()

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        await self.inner.publish(events[: self.after])
        self.stalled.set()
        await asyncio.Event().wait()  # forever

    async def close(self) -> None:
        await self.inner.close()


async def recording_client(app_client: AppClient, redis_url: str, stream: str) -> httpx.AsyncClient:
    """An app that records events but relays none (EVENTS_RELAY unset): the test runs the relays."""
    return await app_client(**events_settings(events_publisher="redis", redis_url=redis_url, events_topic=stream))


def ids(events: Sequence[tuple[dict[str, Any], str]]) -> list[str]:
    return [event["id"] for event, _ in events]


def outbox_ids(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [str(row["event_id"]) for row in rows]


async def test_a_relay_killed_mid_batch_loses_nothing_and_duplicates_keep_their_id(
    app_client: AppClient, relays: Relays, redis: Redis, redis_url: str, stream: str, db: AsyncEngine
) -> None:
    client = await recording_client(app_client, redis_url, stream)
    alice = await sign_up(client)
    for index in range(7):
        await create_task(client, alice, title=f"task {index}")
    recorded = outbox_ids(await outbox_rows(db))
    assert len(recorded) == 8

    first = relays.build(redis_url=redis_url, events_topic=stream, events_publisher="redis")
    stalling = Stalling(first.publisher, after=3)
    first.publisher = stalling
    relays.start(first)
    await asyncio.wait_for(stalling.stalled.wait(), 10)
    await relays.kill(first)  # three events are on the stream, none is marked published
    assert ids(await stream_entries(redis, stream)) == recorded[:3]
    assert await pending_count(db) == 8

    relays.start(relays.build(redis_url=redis_url, events_topic=stream, events_publisher="redis"))
    await wait_for_stream(redis, stream, 3 + 8)
    await eventually(lambda: _none_pending(db), what="the outbox to drain")
    published = ids(await stream_entries(redis, stream))
    assert published == recorded[:3] + recorded  # the first three twice, with the same ids; nothing lost
    assert list(dict.fromkeys(published)) == recorded  # first sightings are in commit order
    await relays.stop_all()


async def _none_pending(db: AsyncEngine) -> bool:
    return await pending_count(db) == 0


async def test_two_relays_publish_each_event_once_and_keep_each_users_order(
    app_client: AppClient, relays: Relays, redis: Redis, redis_url: str, stream: str, db: AsyncEngine
) -> None:
    options: dict[str, Any] = {"redis_url": redis_url, "events_topic": stream, "events_publisher": "redis"}
    one, two = relays.start(relays.build(**options)), relays.start(relays.build(**options))
    await eventually(lambda: _leaders(one, two, 1), what="one active relay")
    client = await recording_client(app_client, redis_url, stream)
    users = [await sign_up(client) for _ in range(3)]

    async def busy(owner: Account) -> None:
        """Concurrent writes of one user: creates, and racing updates of one task (row-locked, so ordered)."""
        task = await create_task(client, owner, title="shared")
        url = f"{owner.tasks}/{task['id']}"
        await asyncio.gather(
            *(create_task(client, owner, title=f"t{index}") for index in range(4)),
            *(client.patch(url, json={"title": f"u{index}"}, headers=owner.auth) for index in range(6)),
        )

    await asyncio.gather(*(busy(owner) for owner in users))
    rows = await outbox_rows(db)
    assert len(rows) == 3 * (1 + 1 + 4 + 6)
    await wait_for_stream(redis, stream, len(rows))
    await eventually(lambda: _none_pending(db), what="the outbox to drain")
    await asyncio.sleep(0.5)
    entries = await stream_entries(redis, stream)
    assert sorted(ids(entries)) == sorted(outbox_ids(rows))  # each exactly once
    assert sorted([one.published, two.published]) == [0, len(rows)]  # the standby sent nothing
    for owner in users:
        mine = [event for event, key in entries if key == owner.id]
        assert [event["id"] for event in mine] == outbox_ids([row for row in rows if row["partition_key"] == owner.id])
        assert mine[0]["type"] == "todo.user.signed_up"
        assert mine[1]["data"]["title"] == "shared"
        # Each write of the shared task follows the one it overwrote.
        shared = [event["data"] for event in mine if event["subject"] == mine[1]["subject"]]
        stamps = [data["updated_at"] for data in shared]
        assert stamps == sorted(stamps)
        assert len(set(stamps)) == len(stamps) == 7

    # The active relay dies; the standby takes over within seconds and nothing is lost.
    leader, standby = (one, two) if one.active else (two, one)
    await relays.kill(leader)
    started = asyncio.get_running_loop().time()
    later = await create_task(client, users[0], title="after the failover")
    events = await wait_for_stream(redis, stream, len(rows) + 1)
    assert events[-1]["data"] == later
    assert standby.active
    assert asyncio.get_running_loop().time() - started < 5
    await relays.stop_all()


async def _leaders(one: Any, two: Any, count: int) -> bool:
    return [one.active, two.active].count(True) == count


async def test_a_writer_waits_for_the_same_users_earlier_transaction(is_postgres: bool, db: AsyncEngine) -> None:
    """On PostgreSQL, `seq` is drawn under a per-owner lock, so one owner's `seq` order is its commit order."""
    if not is_postgres:
        pytest.skip("PostgreSQL only: SQLite has a single writer, so its rowids are commit order already")
    recorder = Outbox("test")
    async with db.connect() as first, db.connect() as second, db.connect() as other:
        await first.begin()
        await second.begin()
        await other.begin()
        await recorder.record(SqlAlchemySession(first), "task.created", "a", "owner-x", {"n": 1})
        blocked = asyncio.create_task(
            recorder.record(SqlAlchemySession(second), "task.created", "b", "owner-x", {"n": 2})
        )
        # another owner: no wait
        await recorder.record(SqlAlchemySession(other), "task.created", "c", "owner-y", {"n": 3})
        await other.commit()
        await asyncio.sleep(0.3)
        assert not blocked.done()  # owner-x's second write waits for the first to finish
        await first.commit()
        await asyncio.wait_for(blocked, 5)
        await second.commit()
    rows = await outbox_rows(db, "owner-x")
    assert [row["seq"] for row in rows] == sorted(row["seq"] for row in rows)
    assert ['"n":1' in row["payload"] for row in rows] == [True, False]


async def test_published_events_are_pruned_after_the_retention_period(
    relays: Relays, db: AsyncEngine, redis_url: str, stream: str
) -> None:
    recorder = Outbox("test")
    async with db.begin() as connection:
        for kind in ("old", "recent", "pending"):
            await recorder.record(SqlAlchemySession(connection), f"task.{kind}", kind, "owner-prune", {})
    async with db.begin() as connection:
        now = utcnow()
        for kind, published in (("old", now - timedelta(days=8)), ("recent", now - timedelta(days=6))):
            await connection.execute(
                update(outbox).where(outbox.c.event_type == f"todo.task.{kind}").values(published_at=published)
            )
    relay = relays.build(redis_url=redis_url, events_topic=stream, events_publisher="redis")
    async with relay.engine.connect() as connection:
        assert await relay.prune(connection) == 1
        await connection.commit()
    assert [row["event_type"] for row in await outbox_rows(db)] == ["todo.task.recent", "todo.task.pending"]
    await relay.close()
