"""Many writers of one task at once, with events off and on: unconditional writes all apply (last writer wins, never
412), writers sharing one ETag have exactly one winner, and `version` counts exactly the writes that changed
something."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import AppClient, assert_problem, create_task, sign_up
from tests.events.conftest import events_settings
from todo_api.db import parse_database_url
from todo_api.events.models import outbox
from todo_api.tasks.models import tasks

EVENTS = pytest.mark.parametrize("publisher", ["none", "log"], ids=["events-off", "events-on"])


@pytest.fixture
async def direct_db(migrated: str) -> AsyncIterator[AsyncEngine]:
    parsed = parse_database_url(os.environ.get("TEST_DATABASE_URL_DIRECT") or migrated)
    engine = create_async_engine(parsed.url, connect_args=parsed.connect_args, poolclass=NullPool)
    yield engine
    await engine.dispose()


async def stored_version(db: AsyncEngine, task_id: str) -> int:
    async with db.connect() as connection:
        version: int = (
            await connection.execute(select(tasks.c.version).where(tasks.c.id == uuid.UUID(task_id)))
        ).scalar_one()
    return version


async def recorded_types(db: AsyncEngine, task_id: str) -> list[str]:
    async with db.connect() as connection:
        rows = await connection.execute(select(outbox.c.event_type, outbox.c.payload).order_by(outbox.c.seq))
        return [kind for kind, payload in rows if task_id in payload]


async def app(app_client: AppClient, publisher: str) -> httpx.AsyncClient:
    return await app_client(**events_settings(events_publisher=publisher))


@EVENTS
@pytest.mark.parametrize("writers", [20, 50])
@pytest.mark.parametrize("method", ["PATCH", "PUT"])
async def test_concurrent_unconditional_writes_all_apply(
    app_client: AppClient, direct_db: AsyncEngine, publisher: str, writers: int, method: str
) -> None:
    client = await app(app_client, publisher)
    owner = await sign_up(client)
    task = await create_task(client, owner, title="contested")
    url = f"{owner.tasks}/{task['id']}"
    titles = [f"writer {i}" for i in range(writers)]
    responses = await asyncio.gather(
        *(client.request(method, url, json={"title": title}, headers=owner.auth) for title in titles)
    )
    assert [r.status_code for r in responses] == [200] * writers, [r.text for r in responses if r.status_code != 200]
    final = await client.get(url, headers=owner.auth)
    assert final.json()["title"] in titles
    # Every write changed the title, so each one moved the version by one: none was lost, none counted twice.
    assert await stored_version(direct_db, task["id"]) == 1 + writers
    # The last writer's answer is the final state (its ETag included); every answer is a distinct state.
    last = max(responses, key=lambda r: r.json()["updated_at"])
    assert last.json() == final.json()
    assert last.headers["etag"] == final.headers["etag"]
    assert len({r.headers["etag"] for r in responses}) == writers
    if publisher != "none":
        assert await recorded_types(direct_db, task["id"]) == ["todo.task.created"] + ["todo.task.updated"] * writers


@EVENTS
async def test_concurrent_writes_of_the_same_value_change_the_task_once(
    app_client: AppClient, direct_db: AsyncEngine, publisher: str
) -> None:
    client = await app_client(**events_settings(events_publisher=publisher))
    owner = await sign_up(client)
    task = await create_task(client, owner, title="to finish")
    url = f"{owner.tasks}/{task['id']}/complete"
    responses = await asyncio.gather(*(client.patch(url, headers=owner.auth) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["completed"] for r in responses} == {True}
    assert len({r.headers["etag"] for r in responses}) == 1  # every writer saw the one state the first one made
    assert await stored_version(direct_db, task["id"]) == 2
    if publisher != "none":
        assert await recorded_types(direct_db, task["id"]) == ["todo.task.created", "todo.task.completed"]


@EVENTS
@pytest.mark.parametrize("method", ["PATCH", "PUT", "DELETE"])
async def test_of_twenty_writers_with_one_etag_exactly_one_wins(
    app_client: AppClient, direct_db: AsyncEngine, publisher: str, method: str
) -> None:
    client = await app_client(**events_settings(events_publisher=publisher))
    owner = await sign_up(client)
    created = await client.post(owner.tasks, json={"title": "contested"}, headers=owner.auth)
    url = f"{owner.tasks}/{created.json()['id']}"
    headers = {**owner.auth, "If-Match": created.headers["etag"]}
    bodies: list[dict[str, Any] | None] = [None if method == "DELETE" else {"title": f"writer {i}"} for i in range(20)]
    responses = await asyncio.gather(*(client.request(method, url, json=b, headers=headers) for b in bodies))
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1, [r.status_code for r in responses]
    for loser in (r for r in responses if r.status_code != 200):
        if method == "DELETE":
            assert_problem(loser, 404, "not-found")  # 404 before 412: the task is gone by the time they judge it
            continue
        assert_problem(loser, 412, "precondition-failed")
        assert loser.headers["etag"] == winners[0].headers["etag"]
    if method != "DELETE":
        assert await stored_version(direct_db, created.json()["id"]) == 2
        assert (await client.get(url, headers=owner.auth)).json() == winners[0].json()
    else:
        assert (await client.get(url, headers=owner.auth)).status_code == 404


@EVENTS
async def test_concurrent_deletes_one_answers_the_task_the_rest_404(app_client: AppClient, publisher: str) -> None:
    client = await app_client(**events_settings(events_publisher=publisher))
    owner = await sign_up(client)
    task = await create_task(client, owner)
    url = f"{owner.tasks}/{task['id']}"
    responses = await asyncio.gather(*(client.delete(url, headers=owner.auth) for _ in range(20)))
    assert sorted(r.status_code for r in responses) == [200] + [404] * 19
    assert next(r for r in responses if r.status_code == 200).json() == task
