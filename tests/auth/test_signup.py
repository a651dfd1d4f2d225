from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pytest

from tests.conftest import PASSWORD, assert_problem, error_locs, sign_up, signup_body, unique_name


async def test_signup_returns_a_token_and_the_new_user(client: httpx.AsyncClient) -> None:
    body = signup_body(email=None)
    body["email"] = f"{body['username']}@Example.COM"
    response = await client.post("/api/auth/signup", json=body)

    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert set(data) == {"access_token", "token_type", "expires_in", "user"}
    assert data["token_type"] == "bearer"
    assert data["expires_in"] == 3600
    user = data["user"]
    assert set(user) == {"id", "username", "email", "created_at"}
    assert user["username"] == body["username"]
    assert user["email"] == body["email"].lower()
    assert datetime.fromisoformat(user["created_at"]).utcoffset() is not None
    assert len(user["created_at"].split(".")[1].rstrip("Z").split("+")[0]) == 6
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {data['access_token']}"})
    assert me.json() == {"id": user["id"], "username": user["username"], "email": user["email"]}


async def test_signup_never_returns_the_password_or_its_hash(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/signup", json=signup_body())
    assert PASSWORD not in response.text
    assert "$2b$" not in response.text


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"username": "ab"}, "username"),
        ({"username": "x" * 33}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": "ünïcode"}, "username"),
        ({"username": 12345}, "username"),
        ({"email": "not-an-email"}, "email"),
        ({"email": None}, "email"),
        ({"password": "short1", "confirm_password": "short1"}, "password"),
        ({"password": "é" * 37, "confirm_password": "é" * 37}, "password"),  # 74 bytes > bcrypt's 72
        ({"password": "a" * 73, "confirm_password": "a" * 73}, "password"),
        ({"confirm_password": "something else"}, "confirm_password"),
        ({"password": "nul\x00nul-password", "confirm_password": "nul\x00nul-password"}, "password"),
    ],
)
async def test_signup_rejects_invalid_fields(
    client: httpx.AsyncClient, overrides: dict[str, object], field: str
) -> None:
    response = await client.post("/api/auth/signup", json={**signup_body(), **overrides})
    assert_problem(response, 400, "validation")
    assert ["body", field] in error_locs(response)


async def test_a_72_byte_password_is_accepted_in_full(client: httpx.AsyncClient) -> None:
    password = "é" * 36  # exactly 72 bytes
    account = await sign_up(client, password=password, confirm_password=password)
    login = await client.post("/api/auth/login", json={"username": account.username, "password": password})
    assert login.status_code == 200
    truncated = await client.post("/api/auth/login", json={"username": account.username, "password": password[:-1]})
    assert truncated.status_code == 401


@pytest.mark.parametrize("missing", ["username", "email", "password", "confirm_password"])
async def test_signup_requires_every_field(client: httpx.AsyncClient, missing: str) -> None:
    body = signup_body()
    del body[missing]
    response = await client.post("/api/auth/signup", json=body)
    assert_problem(response, 400, "validation")
    assert ["body", missing] in error_locs(response)


async def test_signup_rejects_unknown_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/signup", json=signup_body(is_admin=True))
    assert_problem(response, 400, "validation")
    assert ["body", "is_admin"] in error_locs(response)


@pytest.mark.parametrize("raw", [b"{", b"null", b"[]", b'"text"', b"", b"NaN"])
async def test_signup_rejects_bodies_that_are_not_json_objects(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/api/auth/signup", content=raw, headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "validation")


@pytest.mark.parametrize("field", ["username", "email"])
async def test_signup_conflicts_on_a_taken_name_regardless_of_case(client: httpx.AsyncClient, field: str) -> None:
    first = await sign_up(client)
    clash = signup_body()
    clash[field] = getattr(first, field).upper()
    response = await client.post("/api/auth/signup", json=clash)
    problem = assert_problem(response, 409, "conflict")
    assert problem["errors"][0]["loc"] == ["body", field]


async def test_racing_signups_for_one_email_give_one_account(client: httpx.AsyncClient) -> None:
    email = f"{unique_name()}@example.com"
    bodies = [signup_body(email=email) for _ in range(10)]
    responses = await asyncio.gather(*(client.post("/api/auth/signup", json=body) for body in bodies))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 9
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "conflict")
