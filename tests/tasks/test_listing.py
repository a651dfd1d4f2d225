from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Account, assert_problem, create_task, error_locs


async def list_tasks(client: httpx.AsyncClient, owner: Account, **params: Any) -> dict[str, Any]:
    response = await client.get(owner.tasks, params=params, headers=owner.auth)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_empty_list(client: httpx.AsyncClient, alice: Account) -> None:
    assert await list_tasks(client, alice) == {
        "items": [],
        "total": 0,
        "page": 1,
        "page_size": 20,
        "pages": 0,
        "next_cursor": None,
    }


async def test_default_listing_is_newest_first_twenty_a_page(client: httpx.AsyncClient, alice: Account) -> None:
    created = [await create_task(client, alice, title=f"task {index}") for index in range(23)]
    first = await list_tasks(client, alice)
    assert (first["total"], first["pages"], first["page"], first["page_size"]) == (23, 2, 1, 20)
    assert [task["id"] for task in first["items"]] == [task["id"] for task in reversed(created)][:20]
    second = await list_tasks(client, alice, page=2)
    assert [task["id"] for task in second["items"]] == [task["id"] for task in reversed(created)][20:]
    past_the_end = await list_tasks(client, alice, page=3)
    assert past_the_end["items"] == []
    assert (past_the_end["total"], past_the_end["pages"]) == (23, 2)


async def test_titles_sort_case_insensitively_with_ties_by_id(client: httpx.AsyncClient, alice: Account) -> None:
    tasks = [await create_task(client, alice, title=title) for title in ("banana", "Apple", "cherry", "apple", "APPLE")]
    page = await list_tasks(client, alice, sort_by="title", sort_order="asc")
    expected = sorted(tasks, key=lambda task: (task["title"].lower(), task["id"]))
    assert [task["id"] for task in page["items"]] == [task["id"] for task in expected]
    page = await list_tasks(client, alice, sort_by="title", sort_order="desc")
    assert [task["id"] for task in page["items"]] == [task["id"] for task in reversed(expected)]


async def test_filters_by_completion_and_text(client: httpx.AsyncClient, alice: Account) -> None:
    done = await create_task(client, alice, title="Write REPORT", completed=True)
    await create_task(client, alice, title="call mum")
    described = await create_task(client, alice, title="misc", description="the quarterly report draft")
    assert [t["id"] for t in (await list_tasks(client, alice, completed="true"))["items"]] == [done["id"]]
    assert (await list_tasks(client, alice, completed="false"))["total"] == 2
    found = await list_tasks(client, alice, q="RePoRt")
    assert {task["id"] for task in found["items"]} == {done["id"], described["id"]}
    both = await list_tasks(client, alice, q="report", completed="false")
    assert [task["id"] for task in both["items"]] == [described["id"]]


async def test_q_treats_percent_and_underscore_literally(client: httpx.AsyncClient, alice: Account) -> None:
    percent = await create_task(client, alice, title="100% done")
    underscore = await create_task(client, alice, title="snake_case")
    await create_task(client, alice, title="100 percent, snakeXcase")
    assert [t["id"] for t in (await list_tasks(client, alice, q="%"))["items"]] == [percent["id"]]
    assert [t["id"] for t in (await list_tasks(client, alice, q="_"))["items"]] == [underscore["id"]]
    assert (await list_tasks(client, alice, q="\\"))["total"] == 0


async def test_q_matches_non_ascii_case_insensitively(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice, title="ÉCOLE Straße")
    assert [t["id"] for t in (await list_tasks(client, alice, q="école"))["items"]] == [task["id"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": 0}, "page"),
        ({"page": 100_001}, "page"),
        ({"page": "two"}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"sort_by": "importance"}, "sort_by"),
        ({"priority": "urgent"}, "priority"),
        ({"tag": "x" * 33}, "tag"),
        ({"due_min": "2026-12-24"}, "due_min"),
        ({"due_max": "2026-12-24T18:00:00"}, "due_max"),
        ({"due_max": "1798000000"}, "due_max"),
        ({"due_min": "9999-12-31T23:59:59-01:00"}, "due_min"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"sort_order": "up"}, "sort_order"),
        ({"completed": "yes"}, "completed"),
        ({"completed": "1"}, "completed"),
        ({"completed": "True"}, "completed"),
        ({"q": "x" * 201}, "q"),
        ({"q": "nul\x00"}, "q"),
    ],
)
async def test_out_of_range_query_values_are_400(
    client: httpx.AsyncClient, alice: Account, params: dict[str, Any], field: str
) -> None:
    response = await client.get(alice.tasks, params=params, headers=alice.auth)
    assert_problem(response, 400, "validation")
    assert ["query", field] in [loc[:2] for loc in error_locs(response)]


async def test_boundary_query_values_and_unknown_parameters_are_accepted(
    client: httpx.AsyncClient, alice: Account
) -> None:
    await create_task(client, alice)
    page = await list_tasks(client, alice, page=100_000, page_size=100, q="x" * 200, colour="blue")
    assert (page["items"], page["total"], page["page_size"]) == ([], 0, 100)
    assert (await list_tasks(client, alice, page_size=1))["pages"] == 1


async def test_walking_pages_of_identical_timestamps_never_repeats_or_skips(
    client: httpx.AsyncClient, alice: Account
) -> None:
    # Same title everywhere: the order rests entirely on the id tie-breaker.
    ids = {(await create_task(client, alice, title="same"))["id"] for _ in range(25)}
    for sort_by in ("title", "completed", "created_at"):
        for order in ("asc", "desc"):
            walked = []
            for page in range(1, 6):
                walked += [
                    t["id"]
                    for t in (
                        await list_tasks(client, alice, sort_by=sort_by, sort_order=order, page=page, page_size=7)
                    )["items"]
                ]
            assert sorted(walked) == sorted(ids)
            if sort_by != "created_at":
                assert walked == sorted(ids, reverse=order == "desc")
