"""Property-based: random sequences of writes against a plain Python model; every listing must agree with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Account, sign_up

TEXT = st.text(alphabet="abcXYZ éÄ%_", min_size=1, max_size=12).filter(lambda s: s.strip())
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "title": TEXT,
        "description": st.one_of(st.none(), TEXT),
        "completed": st.booleans(),
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


@dataclass
class Model:
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def expected(self, sort_by: str, order: str, completed: bool | None, q: str | None) -> list[str]:
        rows = [
            task
            for task in self.tasks.values()
            if (completed is None or task["completed"] is completed)
            and (not q or q.lower() in task["title"].lower() or q.lower() in (task["description"] or "").lower())
        ]

        def key(task: dict[str, Any]) -> tuple[Any, str]:
            value = task[sort_by]
            if sort_by == "title":
                value = value.lower()
            elif sort_by in ("created_at", "updated_at"):
                value = datetime.fromisoformat(value)
            return (value, task["id"])

        return [task["id"] for task in sorted(rows, key=key, reverse=order == "desc")]


async def apply(client: httpx.AsyncClient, owner: Account, model: Model, operation: tuple[Any, ...]) -> None:
    ids = sorted(model.tasks)
    kind = operation[0]
    if kind == "create":
        body = {"title": "untitled", **operation[1]}
        response = await client.post(owner.tasks, json=body, headers=owner.auth)
        assert response.status_code == 201
        model.tasks[response.json()["id"]] = response.json()
        return
    if not ids:
        return
    task_id = ids[operation[1] % len(ids)]
    url = f"{owner.tasks}/{task_id}"
    before = model.tasks[task_id]
    if kind == "put":
        body = {"title": "replaced", **operation[2]}
        response = await client.put(url, json=body, headers=owner.auth)
        expected = {
            "title": body["title"].strip(),
            "description": body.get("description"),
            "completed": body.get("completed", False),
        }
    elif kind == "patch":
        response = await client.patch(url, json=operation[2], headers=owner.auth)
        expected = {name: before[name] for name in ("title", "description", "completed")}
        expected.update({k: v.strip() if k == "title" else v for k, v in operation[2].items()})
    elif kind == "complete":
        response = await client.patch(f"{url}/complete", json={"completed": operation[2]}, headers=owner.auth)
        expected = {"title": before["title"], "description": before["description"], "completed": operation[2]}
    else:
        response = await client.delete(url, headers=owner.auth)
        assert response.status_code == 200
        assert response.json() == before
        del model.tasks[task_id]
        return
    assert response.status_code == 200, response.text
    after = response.json()
    assert {name: after[name] for name in expected} == expected
    changed = any(before[name] != expected[name] for name in expected)
    assert (after["updated_at"] != before["updated_at"]) is changed
    model.tasks[task_id] = after


async def walk(client: httpx.AsyncClient, owner: Account, page_size: int, **params: Any) -> list[str]:
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
            return seen
        page += 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, page_size=st.integers(1, 7), q=st.sampled_from(["", "a", "É", "%", "_", "zz"]))
async def test_every_listing_agrees_with_the_model(
    client: httpx.AsyncClient, operations: list[tuple[Any, ...]], page_size: int, q: str
) -> None:
    owner = await sign_up(client)
    model = Model()
    for operation in operations:
        await apply(client, owner, model, operation)
    for sort_by in ("created_at", "updated_at", "title", "completed"):
        for order in ("asc", "desc"):
            for completed in (None, True, False):
                params: dict[str, Any] = {"sort_by": sort_by, "sort_order": order}
                if completed is not None:
                    params["completed"] = str(completed).lower()
                if q:
                    params["q"] = q
                walked = await walk(client, owner, page_size, **params)
                assert walked == model.expected(sort_by, order, completed, q or None), params
                assert len(set(walked)) == len(walked)
