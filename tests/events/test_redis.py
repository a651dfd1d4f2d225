"""Task changes and signups through the API land on a real Redis stream, exactly once each and in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Account, AppClient, create_task, signup_body
from tests.events.conftest import (
    assert_cloud_event,
    events_settings,
    outbox_rows,
    pending_count,
    stream_entries,
    wait_for_stream,
)
from todo_api.db import Session
from todo_api.events import Outbox


async def sign_up_with_body(client: httpx.AsyncClient) -> tuple[Account, dict[str, Any]]:
    response = await client.post("/api/auth/signup", json=signup_body())
    assert response.status_code == 201, response.text
    body = response.json()
    user = body["user"]
    return Account(user["id"], user["username"], user["email"], body["access_token"]), user


async def ok(response: Any) -> dict[str, Any]:
    result: httpx.Response = await response
    assert result.is_success, result.text
    body: dict[str, Any] = result.json()
    return body


async def test_every_change_is_one_cloud_event_in_order(
    app_client: AppClient, redis: Redis, redis_url: str, stream: str, db: AsyncEngine
) -> None:
    client = await app_client(
        **events_settings(
            events_publisher="redis",
            events_relay="inline",
            redis_url=redis_url,
            events_topic=stream,
            events_source="urn:todo-api:test",
        )
    )
    alice, alice_data = await sign_up_with_body(client)
    created = await create_task(client, alice, title="Buy milk")
    url = f"{alice.tasks}/{created['id']}"
    updated = await ok(client.patch(url, json={"title": "Buy oat milk"}, headers=alice.auth))
    completed = await ok(client.patch(f"{url}/complete", headers=alice.auth))
    await ok(client.patch(f"{url}/complete", headers=alice.auth))  # already done: no change, no event
    reopened = await ok(client.patch(f"{url}/complete", json={"completed": False}, headers=alice.auth))
    await ok(client.put(url, json={"title": "Buy oat milk"}, headers=alice.auth))  # the same state: no event
    await ok(client.patch(url, json={}, headers=alice.auth))  # nothing: no event
    both = await ok(client.patch(url, json={"completed": True, "description": "2 l"}, headers=alice.auth))
    completed_again = await ok(client.patch(url, json={"completed": False}, headers=alice.auth))
    deleted = await ok(client.delete(url, headers=alice.auth))

    task_id = created["id"]
    expected = [
        ("todo.user.signed_up", alice.id, alice_data),
        ("todo.task.created", task_id, created),
        ("todo.task.updated", task_id, updated),
        ("todo.task.completed", task_id, completed),
        ("todo.task.reopened", task_id, reopened),
        ("todo.task.updated", task_id, both),  # completed and description changed: an update
        ("todo.task.reopened", task_id, completed_again),  # a plain PATCH of `completed` alone counts too
        ("todo.task.deleted", task_id, deleted),  # its last state
    ]
    await wait_for_stream(redis, stream, len(expected))
    await asyncio.sleep(0.5)  # nothing else trickles in
    entries = await stream_entries(redis, stream)
    assert [(event["type"], event["subject"]) for event, _ in entries] == [(t, s) for t, s, _ in expected]
    for (event_, key), (type_, subject, data) in zip(entries, expected, strict=True):
        assert_cloud_event(event_, type_, subject, data, "urn:todo-api:test")
        assert key == alice.id
        assert event_["partitionkey"] == alice.id
    assert len({event_["id"] for event_, _ in entries}) == len(entries)
    rows = await outbox_rows(db, alice.id)
    assert [row["event_id"].hex for row in rows] == [event_["id"].replace("-", "") for event_, _ in entries]
    assert all(row["published_at"] is not None for row in rows)


async def test_users_are_keyed_apart_and_each_keeps_its_order(
    app_client: AppClient, redis: Redis, redis_url: str, stream: str, db: AsyncEngine
) -> None:
    client = await app_client(
        **events_settings(events_publisher="redis", events_relay="inline", redis_url=redis_url, events_topic=stream)
    )
    alice, _ = await sign_up_with_body(client)
    bob, _ = await sign_up_with_body(client)

    async def work(owner: Account) -> list[str]:
        task = await create_task(client, owner, title=f"{owner.username}'s")
        url = f"{owner.tasks}/{task['id']}"
        titles = []
        for index in range(5):
            titles.append((await ok(client.patch(url, json={"title": f"v{index}"}, headers=owner.auth)))["title"])
        return titles

    await asyncio.gather(work(alice), work(bob))
    events = await wait_for_stream(redis, stream, 2 * 7)
    entries = await stream_entries(redis, stream)
    for owner in (alice, bob):
        mine = [event_ for event_, key in entries if key == owner.id]
        assert [event_["type"] for event_ in mine] == ["todo.user.signed_up", "todo.task.created"] + [
            "todo.task.updated"
        ] * 5
        assert [event_["data"]["title"] for event_ in mine[2:]] == [f"v{index}" for index in range(5)]
        assert all(event_["data"].get("user_id", owner.id) == owner.id for event_ in mine)
    assert len(events) == 14


@contextmanager
def failing_after_the_outbox_insert(owner: Account) -> Iterator[list[str]]:
    """Make `owner`'s write transactions fail right after the statement that writes the outbox row."""
    failed: list[str] = []
    record = Outbox.record

    async def record_then_fail(self: Outbox, session: Session, kind: str, subject: str, key: str, data: Any) -> Any:
        event_ = await record(self, session, kind, subject, key, data)
        if key == owner.id:
            failed.append(kind)
            raise RuntimeError("injected failure after the outbox insert")
        return event_

    Outbox.record = record_then_fail  # type: ignore[method-assign,assignment]
    try:
        yield failed
    finally:
        Outbox.record = record  # type: ignore[method-assign]


@asynccontextmanager
async def failing_trigger(db: AsyncEngine, owner: Account, is_postgres: bool) -> AsyncIterator[None]:
    """A trigger on the outbox that raises for `owner`: on PostgreSQL a deferred constraint trigger, so the error
    comes at COMMIT, after every statement of the request succeeded; on SQLite (no deferred triggers) at the
    outbox INSERT."""
    owner_id = owner.id.replace("'", "''")
    if is_postgres:
        create = [
            "CREATE FUNCTION test_refuse_event() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected: refused at commit'; END $$",
            "CREATE CONSTRAINT TRIGGER test_refuse_event AFTER INSERT ON event_outbox "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
            f"WHEN (NEW.partition_key = '{owner_id}') EXECUTE FUNCTION test_refuse_event()",
        ]
        drop = ["DROP TRIGGER test_refuse_event ON event_outbox", "DROP FUNCTION test_refuse_event()"]
    else:
        create = [
            "CREATE TRIGGER test_refuse_event AFTER INSERT ON event_outbox "
            f"WHEN NEW.partition_key = '{owner_id}' BEGIN SELECT RAISE(ABORT, 'injected: refused'); END"
        ]
        drop = ["DROP TRIGGER test_refuse_event"]
    async with db.begin() as connection:
        for statement in create:
            await connection.execute(text(statement))
    try:
        yield
    finally:
        async with db.begin() as connection:
            for statement in drop:
                await connection.execute(text(statement))


@pytest.mark.parametrize("failure", ["statement", "trigger"])
async def test_a_failed_request_leaves_no_event(
    app_client: AppClient,
    redis: Redis,
    redis_url: str,
    stream: str,
    db: AsyncEngine,
    is_postgres: bool,
    failure: str,
) -> None:
    client = await app_client(
        **events_settings(events_publisher="redis", events_relay="inline", redis_url=redis_url, events_topic=stream)
    )
    alice, _ = await sign_up_with_body(client)
    task = await create_task(client, alice, title="keep")
    url = f"{alice.tasks}/{task['id']}"

    assert (await client.post(alice.tasks, json={"title": ""}, headers=alice.auth)).status_code == 400
    assert (await client.patch(url, json={"completed": "maybe"}, headers=alice.auth)).status_code == 400
    stale = {**alice.auth, "If-Match": '"0000"'}
    assert (await client.patch(url, json={"title": "no"}, headers=stale)).status_code == 412
    assert (await client.delete(url, headers=stale)).status_code == 412
    async with AsyncExitStack() as stack:
        if failure == "statement":
            stack.enter_context(failing_after_the_outbox_insert(alice))
        else:
            await stack.enter_async_context(failing_trigger(db, alice, is_postgres))
        assert (await client.post(alice.tasks, json={"title": "lost"}, headers=alice.auth)).status_code == 500
        assert (await client.patch(url, json={"title": "lost"}, headers=alice.auth)).status_code == 500
        assert (await client.delete(url, headers=alice.auth)).status_code == 500
    # The changes were rolled back, and their events with them.
    listing = await ok(client.get(alice.tasks, headers=alice.auth))
    assert [item["title"] for item in listing["items"]] == ["keep"]
    await ok(client.patch(url, json={"title": "kept"}, headers=alice.auth))

    events = await wait_for_stream(redis, stream, 3)
    await asyncio.sleep(0.3)
    assert [(event_["type"], event_["data"].get("title")) for event_ in await _all(redis, stream)] == [
        ("todo.user.signed_up", None),
        ("todo.task.created", "keep"),
        ("todo.task.updated", "kept"),
    ]
    assert len(events) == 3
    assert len(await outbox_rows(db, alice.id)) == 3
    assert await pending_count(db) == 0


async def _all(redis: Redis, stream: str) -> list[dict[str, Any]]:
    return [event_ for event_, _ in await stream_entries(redis, stream)]


async def test_publisher_none_records_nothing(app_client: AppClient, db: AsyncEngine) -> None:
    client = await app_client()  # EVENTS_PUBLISHER defaults to none
    alice, _ = await sign_up_with_body(client)
    task = await create_task(client, alice)
    await ok(client.patch(f"{alice.tasks}/{task['id']}/complete", headers=alice.auth))
    await ok(client.delete(f"{alice.tasks}/{task['id']}", headers=alice.auth))
    assert await outbox_rows(db) == []
