"""Property-based: random sequences of writes against a plain Python model; every listing — any sort, any filters,
walked by page or by cursor — must agree with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Account, sign_up

TEXT = st.text(alphabet="abcXYZ éÄ%_", min_size=1, max_size=12).filter(lambda s: s.strip())
DUE = st.sampled_from(
    ["2026-12-24T18:00:00+01:00", "2026-12-24T17:00:00Z", "2026-12-25T00:00:00.5+00:00", "2027-01-01T09:30:00-08:00"]
)
TAGS = st.lists(st.sampled_from(["Home", "home", " work ", "WORK", "errand", "x"]), max_size=4)
PRIORITY = st.sampled_from(["none", "low", "medium", "high"])
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "title": TEXT,
        "description": st.one_of(st.none(), TEXT),
        "completed": st.booleans(),
        "priority": PRIORITY,
        "due_at": st.one_of(st.none(), DUE),
        "tags": TAGS,
    },
)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), FIELDS),
        st.tuples(st.just("put"), st.integers(0, 20), FIELDS),
        st.tuples(st.just("patch"), st.integers(0, 20), FIELDS),
        st.tuples(st.just("complete"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("delete"), st.integers(0, 20)),
    ),
    min_size=1,
    max_size=25,
)
FILTERS = st.fixed_dictionaries(
    {},
    optional={
        "completed": st.sampled_from(["true", "false"]),
        "q": st.sampled_from(["a", "É", "%", "_", "zz"]),
        "priority": PRIORITY,
        "tag": st.lists(st.sampled_from(["home", "WORK", "errand"]), min_size=1, max_size=2),
        "due_min": DUE,
        "due_max": DUE,
    },
)
RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}
EDITABLE = ("title", "description", "completed", "priority", "due_at", "tags")
DEFAULTS: dict[str, Any] = {"description": None, "completed": False, "priority": "none", "due_at": None, "tags": []}


def utc(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def normalized(name: str, value: Any) -> Any:
    """A field as the API stores it."""
    if name == "title":
        return value.strip()
    if name == "tags":
        return list(dict.fromkeys(tag.strip().lower() for tag in value))
    if name == "due_at":
        due = utc(value)
        return None if due is None else due.isoformat(timespec="microseconds")
    return value


@dataclass
class Model:
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def expected(self, sort_by: str, order: str, filters: dict[str, Any]) -> list[str]:
        q = filters.get("q", "").lower()
        tags = {tag.lower() for tag in filters.get("tag", [])}
        due_min, due_max = utc(filters.get("due_min")), utc(filters.get("due_max"))

        def matches(task: dict[str, Any]) -> bool:
            due = utc(task["due_at"])
            return (
                ("completed" not in filters or str(task["completed"]).lower() == filters["completed"])
                and (not q or q in task["title"].lower() or q in (task["description"] or "").lower())
                and ("priority" not in filters or task["priority"] == filters["priority"])
                and tags <= set(task["tags"])
                and (due_min is None or (due is not None and due >= due_min))
                and (due_max is None or (due is not None and due < due_max))
            )

        rows = [task for task in self.tasks.values() if matches(task)]
        reverse = order == "desc"
        if sort_by == "due_at":  # tasks without a due date last, in either direction
            dated = sorted((t for t in rows if t["due_at"]), key=lambda t: (utc(t["due_at"]), t["id"]), reverse=reverse)
            undated = sorted((t for t in rows if not t["due_at"]), key=lambda t: t["id"], reverse=reverse)
            return [task["id"] for task in dated + undated]

        def key(task: dict[str, Any]) -> tuple[Any, str]:
            value = task[sort_by]
            if sort_by == "title":
                value = value.lower()
            elif sort_by == "priority":
                value = RANK[value]
            elif sort_by in ("created_at", "updated_at"):
                value = datetime.fromisoformat(value)
            return (value, task["id"])

        return [task["id"] for task in sorted(rows, key=key, reverse=reverse)]


async def apply(client: httpx.AsyncClient, owner: Account, model: Model, operation: tuple[Any, ...]) -> None:
    ids = sorted(model.tasks)
    kind = operation[0]
    if kind == "create":
        body = {"title": "untitled", **operation[1]}
        response = await client.post(owner.tasks, json=body, headers=owner.auth)
        assert response.status_code == 201
        created = response.json()
        assert {name: created[name] for name in EDITABLE} == {
            name: normalized(name, body.get(name, DEFAULTS.get(name))) for name in EDITABLE
        }
        assert (created["completed_at"] is not None) is created["completed"]
        model.tasks[created["id"]] = created
        return
    if not ids:
        return
    task_id = ids[operation[1] % len(ids)]
    url = f"{owner.tasks}/{task_id}"
    before = model.tasks[task_id]
    if kind == "put":
        body = {"title": "replaced", **operation[2]}
        response = await client.put(url, json=body, headers=owner.auth)
        expected = {name: normalized(name, body.get(name, DEFAULTS.get(name))) for name in EDITABLE}
    elif kind == "patch":
        response = await client.patch(url, json=operation[2], headers=owner.auth)
        expected = {name: before[name] for name in EDITABLE}
        expected.update({name: normalized(name, value) for name, value in operation[2].items()})
    elif kind == "complete":
        response = await client.patch(f"{url}/complete", json={"completed": operation[2]}, headers=owner.auth)
        expected = {**{name: before[name] for name in EDITABLE}, "completed": operation[2]}
    else:
        response = await client.delete(url, headers=owner.auth)
        assert response.status_code == 200
        assert response.json() == before
        del model.tasks[task_id]
        return
    assert response.status_code == 200, response.text
    after = response.json()
    assert {name: after[name] for name in EDITABLE} == expected
    changed = any(before[name] != expected[name] for name in expected)
    assert (after["updated_at"] != before["updated_at"]) is changed
    # completed_at: when `completed` last became true; kept while it stays true; null while false.
    if not after["completed"]:
        assert after["completed_at"] is None
    elif before["completed"]:
        assert after["completed_at"] == before["completed_at"]
    else:
        assert after["completed_at"] == after["updated_at"]
    model.tasks[task_id] = after


async def walk_pages(client: httpx.AsyncClient, owner: Account, page_size: int, params: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    page = 1
    while True:
        response = await client.get(
            owner.tasks, params={**params, "page": page, "page_size": page_size}, headers=owner.auth
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["pages"] == -(-body["total"] // page_size)
        seen += [task["id"] for task in body["items"]]
        if page >= body["pages"]:
            assert len(seen) == body["total"]
            assert body["next_cursor"] is None
            return seen
        assert body["next_cursor"]
        page += 1


async def walk_cursor(client: httpx.AsyncClient, owner: Account, page_size: int, params: dict[str, Any]) -> list[str]:
    """Follow `next_cursor` (and, alike, the `Link: rel="next"` URL) from the first page to the last."""
    response = await client.get(owner.tasks, params={**params, "page_size": page_size}, headers=owner.auth)
    seen: list[str] = []
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [task["id"] for task in body["items"]]
        if body["next_cursor"] is None:
            assert "link" not in response.headers
            assert len(seen) == body["total"]
            return seen
        link = response.headers["link"]
        assert link.endswith('>; rel="next"')
        response = await client.get(link[1 : -len('>; rel="next"')], headers=owner.auth)
        assert response.json()["page"] is None if response.status_code == 200 else True


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, page_size=st.integers(1, 7), filters=FILTERS)
async def test_every_listing_agrees_with_the_model(
    client: httpx.AsyncClient, operations: list[tuple[Any, ...]], page_size: int, filters: dict[str, Any]
) -> None:
    owner = await sign_up(client)
    model = Model()
    for operation in operations:
        await apply(client, owner, model, operation)
    for sort_by in ("created_at", "updated_at", "title", "completed", "priority", "due_at"):
        for order in ("asc", "desc"):
            params: dict[str, Any] = {"sort_by": sort_by, "sort_order": order, **filters}
            expected = model.expected(sort_by, order, filters)
            assert await walk_pages(client, owner, page_size, params) == expected, params
            assert await walk_cursor(client, owner, page_size, params) == expected, params
