"""No lost updates: ETag and If-Match (RFC 9110)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import Account, assert_problem, create_task


async def fresh(client: httpx.AsyncClient, owner: Account) -> tuple[str, str]:
    response = await client.post(owner.tasks, json={"title": "versioned"}, headers=owner.auth)
    return f"{owner.tasks}/{response.json()['id']}", response.headers["etag"]


WRITES = [
    ("PUT", "", {"title": "put"}),
    ("PATCH", "", {"title": "patched"}),
    ("PATCH", "/complete", {}),
    ("DELETE", "", None),
]


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
async def test_a_matching_if_match_lets_the_write_through(
    client: httpx.AsyncClient, alice: Account, method: str, suffix: str, body: dict[str, object] | None
) -> None:
    for if_match in ("{tag}", '"nope", {tag}', "*"):
        url, tag = await fresh(client, alice)
        headers = {**alice.auth, "If-Match": if_match.format(tag=tag)}
        response = await client.request(method, url + suffix, json=body, headers=headers)
        assert response.status_code == 200, (if_match, response.text)


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
@pytest.mark.parametrize("stale", ['"stale"', 'W/"{tag}"', "garbage"])
async def test_a_stale_or_weak_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient,
    alice: Account,
    method: str,
    suffix: str,
    body: dict[str, object] | None,
    stale: str,
) -> None:
    url, tag = await fresh(client, alice)
    before = (await client.get(url, headers=alice.auth)).json()
    response = await client.request(
        method, url + suffix, json=body, headers={**alice.auth, "If-Match": stale.format(tag=tag.strip('"'))}
    )
    assert_problem(response, 412, "precondition-failed")
    assert response.headers["etag"] == tag
    after = await client.get(url, headers=alice.auth)
    assert after.json() == before
    assert after.headers["etag"] == tag


async def test_the_etag_changes_with_every_change_and_differs_between_tasks(
    client: httpx.AsyncClient, alice: Account
) -> None:
    url, first = await fresh(client, alice)
    _, other = await fresh(client, alice)
    assert first != other
    changed = await client.patch(url, json={"title": "v2"}, headers=alice.auth)
    assert changed.headers["etag"] not in (first, other)
    old = await client.put(url, json={"title": "v3"}, headers={**alice.auth, "If-Match": first})
    assert_problem(old, 412, "precondition-failed")


async def test_if_match_on_a_missing_task_is_404(client: httpx.AsyncClient, alice: Account) -> None:
    url, _ = await fresh(client, alice)
    await client.delete(url, headers=alice.auth)
    response = await client.patch(url, json={"title": "x"}, headers={**alice.auth, "If-Match": "*"})
    assert_problem(response, 404, "not-found")


async def test_concurrent_writes_with_the_same_tag_have_exactly_one_winner(
    client: httpx.AsyncClient, alice: Account
) -> None:
    task = await create_task(client, alice, title="contested")
    url = f"{alice.tasks}/{task['id']}"
    tag = (await client.get(url, headers=alice.auth)).headers["etag"]
    bodies = [{"title": "from A"}, {"description": "from B"}, {"completed": True}, {"title": "from D"}]
    responses = await asyncio.gather(
        *(client.patch(url, json=body, headers={**alice.auth, "If-Match": tag}) for body in bodies)
    )
    assert sorted(r.status_code for r in responses) == [200, 412, 412, 412]
    winner = next(r for r in responses if r.status_code == 200)
    assert (await client.get(url, headers=alice.auth)).json() == winner.json()


async def test_concurrent_writes_without_if_match_all_land(client: httpx.AsyncClient, alice: Account) -> None:
    task = await create_task(client, alice, title="busy")
    url = f"{alice.tasks}/{task['id']}"
    responses = await asyncio.gather(
        client.patch(url, json={"description": "d"}, headers=alice.auth),
        client.patch(url, json={"completed": True}, headers=alice.auth),
        client.patch(url, json={"title": "renamed"}, headers=alice.auth),
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    final = (await client.get(url, headers=alice.auth)).json()
    assert (final["title"], final["description"], final["completed"]) == ("renamed", "d", True)
