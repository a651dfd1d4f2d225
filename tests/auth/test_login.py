from __future__ import annotations

import httpx
import pytest

from tests.conftest import PASSWORD, Account, assert_problem, sign_up


@pytest.fixture
async def account(client: httpx.AsyncClient) -> Account:
    return await sign_up(client)


async def login(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post("/api/auth/login", json=body)


@pytest.mark.parametrize("how", ["username", "USERNAME", "email", "EMAIL", "email-in-username"])
async def test_login_by_username_or_email_regardless_of_case(
    client: httpx.AsyncClient, account: Account, how: str
) -> None:
    body: dict[str, object] = {
        "username": {"username": account.username, "USERNAME": account.username.upper()}.get(how),
        "email": {"email": account.email, "EMAIL": account.email.upper()}.get(how),
        "password": PASSWORD,
    }
    if how == "email-in-username":
        body["username"] = account.email.upper()
    response = await login(client, **{key: value for key, value in body.items() if value is not None})

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["token_type"] == "bearer"
    assert data["user"]["id"] == account.id
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {data['access_token']}"})
    assert me.json()["id"] == account.id


async def test_wrong_password_and_unknown_user_get_the_same_401(client: httpx.AsyncClient, account: Account) -> None:
    wrong = await login(client, username=account.username, password="wrong password")
    unknown = await login(client, username="nobody_" + account.username, password=PASSWORD)
    for response in (wrong, unknown):
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json() == unknown.json()


@pytest.mark.parametrize(
    "body",
    [
        {"password": PASSWORD},  # no identifier
        {"username": "someone", "email": "someone@example.com", "password": PASSWORD},  # both
        {"username": "someone"},  # no password
        {"username": "someone", "password": PASSWORD, "remember_me": True},  # unknown field
        {"username": 42, "password": PASSWORD},
        {"username": "someone", "password": None},
        {"username": "someone", "password": "a" * 73},  # over bcrypt's 72 bytes: 400, never a 500
        {"username": "someone", "password": "é" * 37},
        {"username": "someone", "password": "nul\x00byte"},
    ],
)
async def test_malformed_login_bodies_are_400(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    assert_problem(await login(client, **body), 400, "validation")


async def test_login_with_bad_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/login", content=b"{bad", headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "validation")
