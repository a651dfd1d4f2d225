"""Nobody sees, changes or learns about another user's tasks (OWASP API1:2023)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import Account, assert_problem, create_task

# (method, path under /api/{user_id}/tasks, body)
OPERATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "", {"title": "intruder"}),
    ("GET", "", None),
    ("GET", "/{task}", None),
    ("PUT", "/{task}", {"title": "hijacked"}),
    ("PATCH", "/{task}", {"title": "hijacked"}),
    ("PATCH", "/{task}/complete", {}),
    ("DELETE", "/{task}", None),
]


@pytest.mark.parametrize(("method", "suffix", "body"), OPERATIONS)
async def test_another_users_path_is_403(
    client: httpx.AsyncClient,
    alice: Account,
    bob: Account,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    bobs_task = await create_task(client, bob, title="bob's")
    url = bob.tasks + suffix.format(task=bobs_task["id"])
    response = await client.request(method, url, json=body, headers=alice.auth)
    assert_problem(response, 403, "forbidden")
    unchanged = await client.get(f"{bob.tasks}/{bobs_task['id']}", headers=bob.auth)
    assert unchanged.json() == bobs_task


@pytest.mark.parametrize(("method", "suffix", "body"), [op for op in OPERATIONS if "{task}" in op[1]])
async def test_another_users_task_under_your_own_path_is_404_like_a_missing_one(
    client: httpx.AsyncClient,
    alice: Account,
    bob: Account,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    bobs_task = await create_task(client, bob, title="bob's")
    foreign = await client.request(
        method, alice.tasks + suffix.format(task=bobs_task["id"]), json=body, headers=alice.auth
    )
    missing = await client.request(
        method, alice.tasks + suffix.format(task=uuid.uuid4()), json=body, headers=alice.auth
    )
    assert_problem(foreign, 404, "not-found")
    assert foreign.json() == missing.json()
    assert "etag" not in foreign.headers
    unchanged = await client.get(f"{bob.tasks}/{bobs_task['id']}", headers=bob.auth)
    assert unchanged.json() == bobs_task


async def test_listings_never_show_another_users_tasks(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    for index in range(3):
        await create_task(client, alice, title=f"alice {index} shared-word")
        await create_task(client, bob, title=f"bob {index} shared-word")
    queries: list[dict[str, str | int]] = [{}, {"q": "shared-word"}, {"completed": "false"}, {"sort_by": "title"}]
    for params in queries:
        page = (await client.get(alice.tasks, params=params, headers=alice.auth)).json()
        assert page["total"] == 3
        assert {task["user_id"] for task in page["items"]} == {alice.id}


async def test_a_user_id_in_the_body_never_moves_a_task(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    task = await create_task(client, alice, user_id=bob.id)
    url = f"{alice.tasks}/{task['id']}"
    await client.put(url, json={"title": "x", "user_id": bob.id}, headers=alice.auth)
    await client.patch(url, json={"user_id": bob.id}, headers=alice.auth)
    assert (await client.get(url, headers=alice.auth)).json()["user_id"] == alice.id
    assert (await client.get(bob.tasks, headers=bob.auth)).json()["total"] == 0


async def test_path_owner_must_match_exactly(client: httpx.AsyncClient, alice: Account) -> None:
    for variant in (alice.id.upper(), f"{alice.id} ", f"{alice.id}%20", "%2e%2e"):
        response = await client.get(f"/api/{variant}/tasks", headers=alice.auth)
        assert response.status_code in (403, 404), variant
        assert response.status_code != 200
    encoded = await client.get(f"/api/{alice.id.replace('-', '%2D')}/tasks", headers=alice.auth)
    assert encoded.status_code == 200  # the same id, URL-encoded


async def test_a_token_subject_that_is_not_a_uuid_owns_tasks_too(client: httpx.AsyncClient) -> None:
    import time

    import jwt

    from tests.conftest import SECRET

    sub = "Xk3v9QmZ2bLw8RtYp4NsAa7DcEfGhJ1K"  # a Better Auth style id
    now = int(time.time())
    headers = {"Authorization": "Bearer " + jwt.encode({"sub": sub, "iat": now, "exp": now + 60}, SECRET)}
    created = await client.post(f"/api/{sub}/tasks", json={"title": "from the frontend"}, headers=headers)
    assert created.status_code == 201
    assert created.json()["user_id"] == sub
    assert (await client.get(f"/api/{sub}/tasks", headers=headers)).json()["total"] == 1
