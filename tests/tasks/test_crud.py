from __future__ import annotations

import uuid
from datetime import datetime

import httpx

from tests.conftest import Account, assert_problem, create_task


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_create_returns_the_task_with_location_and_etag(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.post(
        alice.tasks, json={"title": "  Buy milk  ", "description": "semi-skimmed"}, headers=alice.auth
    )
    assert response.status_code == 201
    task = response.json()
    assert set(task) == {
        "id",
        "user_id",
        "title",
        "description",
        "completed",
        "completed_at",
        "priority",
        "due_at",
        "tags",
        "created_at",
        "updated_at",
    }
    assert (task["priority"], task["due_at"], task["tags"], task["completed_at"]) == ("none", None, [], None)
    assert uuid.UUID(task["id"]).version == 4
    assert task["user_id"] == alice.id
    assert task["title"] == "Buy milk"  # stored trimmed
    assert task["description"] == "semi-skimmed"
    assert task["completed"] is False
    assert task["created_at"] == task["updated_at"]
    assert ts(task["created_at"]).utcoffset() is not None
    assert response.headers["location"] == f"/api/{alice.id}/tasks/{task['id']}"
    assert response.headers["etag"].startswith('"')
    fetched = await client.get(response.headers["location"], headers=alice.auth)
    assert fetched.json() == task
    assert fetched.headers["etag"] == response.headers["etag"]


async def test_create_can_set_completed_and_a_null_description(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice, completed=True, description=None)
    assert task["completed"] is True
    assert task["description"] is None


async def test_read_only_fields_in_a_body_are_ignored(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    sent = {"title": "mine", "id": "not-even-a-uuid", "user_id": bob.id, "created_at": 5, "updated_at": None}
    task = (await client.post(alice.tasks, json=sent, headers=alice.auth)).json()
    assert task["user_id"] == alice.id
    assert task["id"] != "not-even-a-uuid"
    # A client may send back exactly what it read.
    task["title"] = "renamed"
    replaced = await client.put(f"{alice.tasks}/{task['id']}", json=task, headers=alice.auth)
    assert replaced.status_code == 200
    assert replaced.json()["title"] == "renamed"
    assert replaced.json()["user_id"] == alice.id


async def test_get_missing_task_is_404(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.get(f"{alice.tasks}/{uuid.uuid4()}", headers=alice.auth)
    assert_problem(response, 404, "not-found")


async def test_put_replaces_the_whole_task(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice, description="old", completed=True)
    response = await client.put(f"{alice.tasks}/{task['id']}", json={"title": "new"}, headers=alice.auth)
    assert response.status_code == 200
    replaced = response.json()
    assert (replaced["title"], replaced["description"], replaced["completed"]) == ("new", None, False)
    assert replaced["created_at"] == task["created_at"]
    assert ts(replaced["updated_at"]) > ts(task["updated_at"])
    assert response.headers["etag"] != ""


async def test_put_requires_a_title(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice)
    response = await client.put(f"{alice.tasks}/{task['id']}", json={"description": "x"}, headers=alice.auth)
    assert_problem(response, 400, "validation")
    assert response.json()["errors"][0]["loc"] == ["body", "title"]


async def test_patch_changes_only_the_fields_sent(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice, description="keep me")
    response = await client.patch(f"{alice.tasks}/{task['id']}", json={"completed": True}, headers=alice.auth)
    patched = response.json()
    assert (patched["title"], patched["description"], patched["completed"]) == ("a task", "keep me", True)
    assert ts(patched["updated_at"]) > ts(task["updated_at"])
    cleared = await client.patch(f"{alice.tasks}/{task['id']}", json={"description": None}, headers=alice.auth)
    assert cleared.json()["description"] is None


async def test_patch_with_an_empty_object_changes_nothing(client: httpx.AsyncClient, alice: Account) -> None:
    created = await client.post(alice.tasks, json={"title": "same"}, headers=alice.auth)
    task = created.json()
    response = await client.patch(f"{alice.tasks}/{task['id']}", json={}, headers=alice.auth)
    assert response.status_code == 200
    assert response.json() == task
    assert response.headers["etag"] == created.headers["etag"]


async def test_a_write_that_changes_nothing_keeps_updated_at_and_etag(
    client: httpx.AsyncClient, alice: Account
) -> None:
    created = await client.post(alice.tasks, json={"title": "same", "description": "d"}, headers=alice.auth)
    task = created.json()
    url = f"{alice.tasks}/{task['id']}"
    for response in (
        await client.put(url, json={"title": " same ", "description": "d", "completed": False}, headers=alice.auth),
        await client.patch(url, json={"title": "same"}, headers=alice.auth),
        await client.patch(f"{url}/complete", json={"completed": False}, headers=alice.auth),
    ):
        assert response.status_code == 200
        assert response.json()["updated_at"] == task["updated_at"]
        assert response.headers["etag"] == created.headers["etag"]


async def test_patch_rejects_a_null_title(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice)
    response = await client.patch(f"{alice.tasks}/{task['id']}", json={"title": None}, headers=alice.auth)
    assert_problem(response, 400, "validation")
    assert response.json()["errors"][0]["loc"] == ["body", "title"]


async def test_complete_marks_done_and_is_idempotent(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice)
    url = f"{alice.tasks}/{task['id']}/complete"
    first = await client.patch(url, headers=alice.auth)  # no body at all
    assert first.status_code == 200
    assert first.json()["completed"] is True
    second = await client.patch(url, json={}, headers=alice.auth)
    assert second.json() == first.json()
    assert second.headers["etag"] == first.headers["etag"]


async def test_complete_with_false_reopens(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice, completed=True)
    response = await client.patch(f"{alice.tasks}/{task['id']}/complete", json={"completed": False}, headers=alice.auth)
    assert response.json()["completed"] is False
    assert ts(response.json()["updated_at"]) > ts(task["updated_at"])


async def test_complete_rejects_other_fields_and_non_booleans(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice)
    url = f"{alice.tasks}/{task['id']}/complete"
    for body in ({"title": "x"}, {"completed": "yes"}, {"completed": None}, {"completed": 1}):
        assert_problem(await client.patch(url, json=body, headers=alice.auth), 400, "validation")
    missing = await client.patch(f"{alice.tasks}/{uuid.uuid4()}/complete", headers=alice.auth)
    assert_problem(missing, 404, "not-found")


async def test_delete_returns_the_task_and_removes_it(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice)
    url = f"{alice.tasks}/{task['id']}"
    response = await client.delete(url, headers=alice.auth)
    assert response.status_code == 200
    assert response.json() == task
    assert "etag" in response.headers
    assert_problem(await client.get(url, headers=alice.auth), 404, "not-found")
    assert_problem(await client.delete(url, headers=alice.auth), 404, "not-found")
    for method in ("PUT", "PATCH"):
        assert_problem(await client.request(method, url, json={"title": "x"}, headers=alice.auth), 404, "not-found")


async def test_updated_at_moves_on_every_change_even_in_quick_succession(
    client: httpx.AsyncClient, alice: Account
) -> None:
    task = await create_task(client, alice)
    url = f"{alice.tasks}/{task['id']}"
    seen = [task["updated_at"]]
    for index in range(5):
        response = await client.patch(url, json={"title": f"t{index}"}, headers=alice.auth)
        seen.append(response.json()["updated_at"])
    assert [ts(value) for value in seen] == sorted({ts(value) for value in seen})
