"""What a real todo frontend needs beyond the seed: priority, due dates, tags, completed_at, cursors, the tag
list and clearing completed tasks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import Account, AppClient, assert_problem, create_task, error_locs, sign_up
from tests.events.conftest import events_settings, outbox_rows
from todo_api.db import parse_database_url
from todo_api.migrate import upgrade


async def test_the_new_fields_are_stored_normalised(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(
        client, alice, priority="high", due_at="2026-12-24T18:00:00+01:00", tags=["Home", " errand ", "home", "ÉTÉ"]
    )
    assert task["priority"] == "high"
    assert task["due_at"] == "2026-12-24T17:00:00.000000+00:00"
    assert task["tags"] == ["home", "errand", "été"]
    fetched = (await client.get(f"{alice.tasks}/{task['id']}", headers=alice.auth)).json()
    assert fetched == task


async def test_put_resets_absent_fields_and_patch_touches_only_what_it_names(
    client: httpx.AsyncClient, alice: Account
) -> None:
    task = await create_task(client, alice, priority="low", due_at="2026-12-24T18:00:00Z", tags=["a", "b"])
    url = f"{alice.tasks}/{task['id']}"
    patched = (await client.patch(url, json={"tags": ["c"]}, headers=alice.auth)).json()
    assert (patched["priority"], patched["due_at"], patched["tags"]) == ("low", task["due_at"], ["c"])
    cleared = (await client.patch(url, json={"due_at": None}, headers=alice.auth)).json()
    assert cleared["due_at"] is None
    assert cleared["tags"] == ["c"]
    replaced = (await client.put(url, json={"title": "only a title"}, headers=alice.auth)).json()
    assert (replaced["priority"], replaced["due_at"], replaced["tags"], replaced["description"]) == (
        "none",
        None,
        [],
        None,
    )
    assert_problem(await client.patch(url, json={"priority": None}, headers=alice.auth), 400, "validation")


async def test_completed_at_follows_completion(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice)
    url = f"{alice.tasks}/{task['id']}"
    done = (await client.patch(f"{url}/complete", headers=alice.auth)).json()
    assert done["completed_at"] == done["updated_at"]
    again = (await client.patch(url, json={"title": "renamed", "completed": True}, headers=alice.auth)).json()
    assert again["completed_at"] == done["completed_at"]  # still done since then
    reopened = (await client.patch(f"{url}/complete", json={"completed": False}, headers=alice.auth)).json()
    assert reopened["completed_at"] is None
    born_done = await create_task(client, alice, completed=True)
    assert born_done["completed_at"] == born_done["created_at"]
    # A client sending back what it read (completed_at included) changes nothing.
    sent_back = await client.put(f"{alice.tasks}/{born_done['id']}", json=born_done, headers=alice.auth)
    assert sent_back.json() == born_done


async def test_a_cursor_walk_survives_inserts_and_deletes(client: httpx.AsyncClient, alice: Account) -> None:
    tasks = [await create_task(client, alice, title=f"task {i:02}") for i in range(12)]
    params: dict[str, Any] = {"sort_by": "title", "sort_order": "asc", "page_size": 4}
    first = await client.get(alice.tasks, params=params, headers=alice.auth)
    body = first.json()
    seen = [task["title"] for task in body["items"]]
    assert seen == ["task 00", "task 01", "task 02", "task 03"]
    assert body["page"] == 1
    # Meanwhile: a task before the position appears, a seen one and an unseen one go.
    await create_task(client, alice, title="task 00a")
    for gone in (tasks[1], tasks[6]):
        assert (await client.delete(f"{alice.tasks}/{gone['id']}", headers=alice.auth)).status_code == 200
    cursor = body["next_cursor"]
    while cursor:
        response = await client.get(alice.tasks, params={**params, "cursor": cursor}, headers=alice.auth)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["page"] is None
        seen += [task["title"] for task in body["items"]]
        cursor = body["next_cursor"]
    stayed = [task["title"] for task in tasks if task not in (tasks[1], tasks[6])]
    assert [title for title in seen if title in stayed] == stayed[:1] + stayed[1:]  # each once, in order
    assert len(seen) == len(set(seen))
    assert "task 06" not in seen


async def cursor_of(client: httpx.AsyncClient, owner: Account, **params: Any) -> str:
    body = (await client.get(owner.tasks, params={"page_size": 1, **params}, headers=owner.auth)).json()
    cursor: str = body["next_cursor"]
    assert cursor
    return cursor


async def test_a_cursor_is_bound_to_its_listing_and_cannot_be_forged(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    for _ in range(3):
        await create_task(client, alice, tags=["t"])
        await create_task(client, bob)
    cursor = await cursor_of(client, alice, sort_by="title", tag="t")
    ok = await client.get(
        alice.tasks, params={"page_size": 1, "sort_by": "title", "tag": "t", "cursor": cursor}, headers=alice.auth
    )
    assert ok.status_code == 200
    payload, _, signature = cursor.partition(".")
    tampered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + signature
    mismatched: list[dict[str, Any]] = [
        {"page_size": 2, "sort_by": "title", "tag": "t"},  # another page size
        {"page_size": 1, "sort_by": "created_at", "tag": "t"},  # another sort
        {"page_size": 1, "sort_by": "title"},  # other filters
        {"page_size": 1, "sort_by": "title", "tag": "t", "page": 2},  # page and cursor together
    ]
    for params in mismatched:
        response = await client.get(alice.tasks, params={**params, "cursor": cursor}, headers=alice.auth)
        assert_problem(response, 400, "validation")
        assert any(
            loc[:2] in (["query", "cursor"], ["query"]) or loc[:2] == ["query", "page"] for loc in error_locs(response)
        )
    for bad in (tampered, cursor + "x", "e30.AAAA", "😀", ""):
        response = await client.get(
            alice.tasks, params={"page_size": 1, "sort_by": "title", "tag": "t", "cursor": bad}, headers=alice.auth
        )
        if bad == "":
            continue  # an empty cursor is no cursor
        assert_problem(response, 400, "validation")
        assert ["query", "cursor"] in error_locs(response)
    # Another user's cursor for the same listing is not theirs to use.
    bobs = await cursor_of(client, bob, sort_by="title")
    response = await client.get(
        alice.tasks, params={"page_size": 1, "sort_by": "title", "cursor": bobs}, headers=alice.auth
    )
    assert_problem(response, 400, "validation")


async def test_the_tag_list_counts_your_tags_sorted_by_name(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    assert (await client.get(f"/api/{alice.id}/tags", headers=alice.auth)).json() == {"items": []}
    await create_task(client, alice, tags=["Work", "home"])
    await create_task(client, alice, tags=["work"])
    await create_task(client, alice, tags=["été", "a-b"])
    await create_task(client, bob, tags=["secret"])
    response = await client.get(f"/api/{alice.id}/tags", headers=alice.auth)
    assert response.status_code == 200
    assert response.json() == {
        "items": [
            {"name": "a-b", "count": 1},
            {"name": "home", "count": 1},
            {"name": "work", "count": 2},
            {"name": "été", "count": 1},
        ]
    }
    assert_problem(await client.get(f"/api/{bob.id}/tags", headers=alice.auth), 403, "forbidden")


async def test_clear_completed_deletes_exactly_the_completed_tasks(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    open_task = await create_task(client, alice)
    for _ in range(3):
        await create_task(client, alice, completed=True)
    bobs = await create_task(client, bob, completed=True)
    for params in ({}, {"completed": "false"}, {"completed": "yes"}):
        refused = await client.delete(alice.tasks, params=params, headers=alice.auth)
        assert_problem(refused, 400, "validation")
        assert ["query", "completed"] in error_locs(refused)
    assert (await client.get(alice.tasks, headers=alice.auth)).json()["total"] == 4  # nothing deleted
    response = await client.delete(alice.tasks, params={"completed": "true"}, headers=alice.auth)
    assert response.status_code == 200
    assert response.json() == {"deleted": 3}
    left = (await client.get(alice.tasks, headers=alice.auth)).json()
    assert [task["id"] for task in left["items"]] == [open_task["id"]]
    assert left["total"] == 1
    assert (await client.get(alice.tasks, params={"completed": "true"}, headers=alice.auth)).json()["total"] == 0
    assert (await client.delete(alice.tasks, params={"completed": "true"}, headers=alice.auth)).json() == {"deleted": 0}
    assert (await client.get(f"{bob.tasks}/{bobs['id']}", headers=bob.auth)).status_code == 200


@pytest.fixture
async def db(migrated: str) -> AsyncEngine:
    import os

    parsed = parse_database_url(os.environ.get("TEST_DATABASE_URL_DIRECT") or migrated)
    return create_async_engine(parsed.url, connect_args=parsed.connect_args, poolclass=NullPool)


async def test_events_carry_the_new_fields_and_one_deletion_per_cleared_task(
    app_client: AppClient, db: AsyncEngine
) -> None:
    client = await app_client(**events_settings(events_publisher="log"))
    owner = await sign_up(client)
    task = await create_task(client, owner, tags=["x"], priority="medium")
    url = f"{owner.tasks}/{task['id']}"
    await client.patch(f"{url}/complete", headers=owner.auth)  # completed_at moves too: still "completed"
    await client.patch(url, json={"priority": "high"}, headers=owner.auth)
    await create_task(client, owner, completed=True)
    assert (await client.delete(owner.tasks, params={"completed": "true"}, headers=owner.auth)).json() == {"deleted": 2}
    events = [orjson.loads(row["payload"]) for row in await outbox_rows(db, owner.id)]
    assert [event["type"] for event in events] == [
        "todo.user.signed_up",
        "todo.task.created",
        "todo.task.completed",
        "todo.task.updated",
        "todo.task.created",
        "todo.task.deleted",
        "todo.task.deleted",
    ]
    assert events[1]["data"]["tags"] == ["x"]
    assert events[3]["data"]["priority"] == "high"
    assert events[2]["data"]["completed_at"] is not None
    await db.dispose()


async def test_migration_0004_gives_existing_rows_the_defaults_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    await upgrade(url, "0003")
    engine = create_async_engine(parse_database_url(url).url)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO tasks (id, user_id, title, title_key, description, completed, version, created_at, "
                "updated_at) "
                "VALUES ('0f0e0d0c0b0a09080706050403020100', 'u', 'old', 'old', NULL, 1, 3, "
                "'2026-01-01 00:00:00.000000', '2026-01-02 00:00:00.000000')"
            )
        )
    await upgrade(url, "head")
    async with engine.connect() as connection:
        row = (await connection.execute(text("SELECT priority, due_at, tags, completed_at FROM tasks"))).one()
    assert tuple(row) == (0, None, "[]", "2026-01-02 00:00:00.000000")
    from alembic import command

    from todo_api.migrate import alembic_config

    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0003"))
    async with engine.connect() as connection:
        columns = {row[1] for row in await connection.execute(text("PRAGMA table_info(tasks)"))}
    assert not columns & {"priority", "due_at", "tags", "completed_at"}
    await engine.dispose()


async def test_filters_by_priority_tags_and_due_range_are_combined(client: httpx.AsyncClient, alice: Account) -> None:
    made = await asyncio.gather(
        *(
            create_task(client, alice, title=title, priority=priority, tags=tags, due_at=due)
            for title, priority, tags, due in [
                ("a", "high", ["work", "urgent"], "2026-12-24T10:00:00Z"),
                ("b", "high", ["work"], "2026-12-25T10:00:00Z"),
                ("c", "low", ["work", "urgent"], "2026-12-24T12:00:00Z"),
                ("d", "high", ["Urgent", "work"], None),
            ]
        )
    )
    assert len(made) == 4

    async def titles(**params: Any) -> list[str]:
        body = (
            await client.get(
                alice.tasks, params={"sort_by": "title", "sort_order": "asc", **params}, headers=alice.auth
            )
        ).json()
        assert body["total"] == len(body["items"])
        return [task["title"] for task in body["items"]]

    assert await titles(priority="high") == ["a", "b", "d"]
    assert await titles(tag=["work", "URGENT"]) == ["a", "c", "d"]
    assert await titles(tag=["work", "urgent"], priority="high") == ["a", "d"]
    assert await titles(due_min="2026-12-24T11:00:00+01:00", due_max="2026-12-25T00:00:00Z") == ["a", "c"]
    assert await titles(due_min="2026-12-25T00:00:00Z", due_max="2026-12-24T00:00:00Z") == []  # min ≥ max: nothing
    due_sorted = (
        await client.get(alice.tasks, params={"sort_by": "due_at", "sort_order": "desc"}, headers=alice.auth)
    ).json()
    assert [task["title"] for task in due_sorted["items"]] == ["b", "c", "a", "d"]  # no due date: last


async def test_several_if_match_lines_are_one_list(client: httpx.AsyncClient, alice: Account) -> None:
    created = await client.post(alice.tasks, json={"title": "listed"}, headers=alice.auth)
    url = f"{alice.tasks}/{created.json()['id']}"
    headers = [*alice.auth.items(), ("If-Match", '"9-0000000000000000"'), ("If-Match", created.headers["etag"])]
    response = await client.patch(url, json={"title": "two lines"}, headers=headers)
    assert response.status_code == 200, response.text
    stale = [*alice.auth.items(), ("If-Match", '"9-0000000000000000"'), ("If-Match", created.headers["etag"])]
    assert_problem(await client.patch(url, json={"title": "again"}, headers=stale), 412, "precondition-failed")


async def test_a_body_of_white_space_is_no_body(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice)
    response = await client.patch(
        f"{alice.tasks}/{task['id']}/complete",
        content=b"  \n ",
        headers={**alice.auth, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["completed"] is True


async def test_clear_completed_wants_one_plain_consent(client: httpx.AsyncClient, alice: Account) -> None:
    await create_task(client, alice, completed=True)
    for query in ("completed=false&completed=true", "completed=true&completed=true", "completed=TRUE"):
        response = await client.delete(f"{alice.tasks}?{query}", headers=alice.auth)
        assert_problem(response, 400, "validation")
    assert (await client.get(alice.tasks, headers=alice.auth)).json()["total"] == 1


async def test_the_order_of_tag_filters_does_not_change_the_listing(client: httpx.AsyncClient, alice: Account) -> None:
    for _ in range(3):
        await create_task(client, alice, tags=["a", "b"])
    first = (await client.get(f"{alice.tasks}?tag=a&tag=b&page_size=1", headers=alice.auth)).json()
    response = await client.get(
        f"{alice.tasks}?tag=b&tag=A&page_size=1&cursor={first['next_cursor']}", headers=alice.auth
    )
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["id"] != first["items"][0]["id"]
