from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Account, assert_problem, create_task, error_locs

BAD_FIELDS = [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": 5}, "title"),
    ({"title": None}, "title"),
    ({"title": ["list"]}, "title"),
    ({"title": "nul\x00byte"}, "title"),
    ({"title": "ok", "description": "x" * 2001}, "description"),
    ({"title": "ok", "description": 12}, "description"),
    ({"title": "ok", "description": "nul\x00"}, "description"),
    ({"title": "ok", "completed": "yes"}, "completed"),
    ({"title": "ok", "completed": 1}, "completed"),
    ({"title": "ok", "completed": None}, "completed"),
    ({"title": "ok", "completed": "true"}, "completed"),
    ({"title": "ok", "priority": "urgent"}, "priority"),
    ({"title": "ok", "priority": None}, "priority"),
    ({"title": "ok", "priority": 3}, "priority"),
    ({"title": "ok", "due_at": "2026-12-24T18:00:00"}, "due_at"),
    ({"title": "ok", "due_at": "2026-12-24"}, "due_at"),
    ({"title": "ok", "due_at": 1798000000}, "due_at"),
    ({"title": "ok", "due_at": "next tuesday"}, "due_at"),
    ({"title": "ok", "due_at": "0001-01-01T00:00:00+01:00"}, "due_at"),  # before year 1 in UTC
    ({"title": "ok", "due_at": "9999-12-31T23:59:59-01:00"}, "due_at"),  # after year 9999 in UTC
    ({"title": "ok", "tags": "work"}, "tags"),
    ({"title": "ok", "tags": [f"t{i}" for i in range(21)]}, "tags"),
    ({"title": "ok", "tags": ["x" * 33]}, "tags"),
    ({"title": "ok", "tags": ["   "]}, "tags"),
    ({"title": "ok", "tags": ["bell\x07"]}, "tags"),
    ({"title": "ok", "tags": [5]}, "tags"),
    ({"title": "ok", "tags": None}, "tags"),
    ({"title": "ok", "surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("body", "field"), BAD_FIELDS)
async def test_create_rejects_bad_fields_naming_them(
    client: httpx.AsyncClient, alice: Account, body: dict[str, object], field: str
) -> None:
    response = await client.post(alice.tasks, json=body, headers=alice.auth)
    assert_problem(response, 400, "validation")
    assert ["body", field] in [loc[:2] for loc in error_locs(response)]


@pytest.mark.parametrize(("body", "field"), BAD_FIELDS)
async def test_put_rejects_bad_fields_and_changes_nothing(
    client: httpx.AsyncClient, alice: Account, body: dict[str, object], field: str
) -> None:
    task = await create_task(client, alice)
    url = f"{alice.tasks}/{task['id']}"
    response = await client.put(url, json=body, headers=alice.auth)
    assert_problem(response, 400, "validation")
    assert ["body", field] in [loc[:2] for loc in error_locs(response)]
    assert (await client.get(url, headers=alice.auth)).json() == task


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"title": "\\ud800 lone"}', "unpaired high surrogate"),
        (b'{"title": "ok", "description": "lone \\udfff"}', "unpaired low surrogate"),
    ],
)
async def test_strings_with_unpaired_surrogates_are_400(
    client: httpx.AsyncClient, alice: Account, raw: bytes, why: str
) -> None:
    response = await client.post(alice.tasks, content=raw, headers={**alice.auth, "Content-Type": "application/json"})
    assert_problem(response, 400, "validation")


async def test_title_limits_count_characters_after_trimming(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice, title="  " + "é" * 200 + "  ", description="d" * 2000)
    assert task["title"] == "é" * 200
    assert len(task["description"]) == 2000


@pytest.mark.parametrize("raw", [b"{not json", b"null", b"[]", b"42", b'"a string"', b"", b"\xff\xfe"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_bodies_that_are_not_json_objects_are_400(
    client: httpx.AsyncClient, alice: Account, raw: bytes, method: str
) -> None:
    task = await create_task(client, alice)
    url = alice.tasks if method == "POST" else f"{alice.tasks}/{task['id']}"
    response = await client.request(
        method, url, content=raw, headers={**alice.auth, "Content-Type": "application/json"}
    )
    assert_problem(response, 400, "validation")
    assert response.json()["errors"][0]["loc"] == ["body"]


@pytest.mark.parametrize("raw", [b"null", b"[]", b"{bad"])
async def test_complete_rejects_non_object_bodies(client: httpx.AsyncClient, alice: Account, raw: bytes) -> None:
    task = await create_task(client, alice)
    response = await client.patch(f"{alice.tasks}/{task['id']}/complete", content=raw, headers=alice.auth)
    assert_problem(response, 400, "validation")


@pytest.mark.parametrize("task_id", ["123", "not-a-uuid", "00000000-0000-0000-0000-00000000000g"])
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_non_uuid_task_ids_are_400(client: httpx.AsyncClient, alice: Account, task_id: str, method: str) -> None:
    response = await client.request(method, f"{alice.tasks}/{task_id}", json={"title": "x"}, headers=alice.auth)
    assert_problem(response, 400, "validation")
    assert ["path", "task_id"] in error_locs(response)


async def test_checks_run_in_the_contract_order(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    bad_json = {"Content-Type": "application/json"}
    # 401 beats bad JSON, 403 beats bad input, 400 beats a missing task.
    response = await client.post(alice.tasks, content=b"{bad", headers=bad_json)
    assert_problem(response, 401, "unauthorized")
    response = await client.post(bob.tasks, content=b"{bad", headers={**alice.auth, **bad_json})
    assert_problem(response, 403, "forbidden")
    response = await client.put(f"{alice.tasks}/{uuid.uuid4()}", json={"title": ""}, headers=alice.auth)
    assert_problem(response, 400, "validation")
    response = await client.put(f"{bob.tasks}/not-a-uuid", json={"title": "x"}, headers=alice.auth)
    assert_problem(response, 403, "forbidden")
