"""Login and signup throttling: 429 before any bcrypt work, without handing attackers a lockout."""

from __future__ import annotations

import itertools
import random

import httpx

from tests.conftest import PASSWORD, AppClient, assert_problem, sign_up, signup_body

PROXY = {"trusted_proxies": "127.0.0.1"}


def from_address(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


_CLIENTS = itertools.count(random.randrange(1 << 23))


def random_address() -> str:
    """An X-Forwarded-For whose client (the right-most address) no other call in this run has had."""
    client = next(_CLIENTS)
    return f"198.51.100.{random.randint(1, 254)}, 10.{client >> 16 & 255}.{client >> 8 & 255}.{client & 255}"


async def fail_login(client: httpx.AsyncClient, username: str, address: str) -> httpx.Response:
    return await client.post(
        "/api/auth/login", json={"username": username, "password": "wrong password"}, headers=from_address(address)
    )


async def test_failed_logins_for_one_identifier_lock_only_that_address(app_client: AppClient) -> None:
    client = await app_client(login_rate_limit="3/minute", **PROXY)
    account = await sign_up(client)
    attacker, owner = random_address(), random_address()
    for _ in range(3):
        assert (await fail_login(client, account.username, attacker)).status_code == 401
    blocked = await fail_login(client, account.username.upper(), attacker)  # case-folded: the same identifier
    assert_problem(blocked, 429, "rate-limited")
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    right = await client.post(
        "/api/auth/login", json={"username": account.username, "password": PASSWORD}, headers=from_address(attacker)
    )
    assert_problem(right, 429, "rate-limited")  # even the right password, while the limit holds
    mine = await client.post(
        "/api/auth/login", json={"username": account.username, "password": PASSWORD}, headers=from_address(owner)
    )
    assert mine.status_code == 200  # the owner's own address is not locked out


async def test_successful_logins_do_not_count(app_client: AppClient) -> None:
    client = await app_client(login_rate_limit="2/minute", **PROXY)
    account = await sign_up(client)
    address = random_address()
    for _ in range(5):
        response = await client.post(
            "/api/auth/login", json={"username": account.username, "password": PASSWORD}, headers=from_address(address)
        )
        assert response.status_code == 200


async def test_failures_over_many_identifiers_lock_the_address(app_client: AppClient) -> None:
    client = await app_client(login_ip_rate_limit="4/minute", **PROXY)
    address = random_address()
    for index in range(4):
        assert (await fail_login(client, f"nobody{index}", address)).status_code == 401
    assert_problem(await fail_login(client, "someone-new", address), 429, "rate-limited")
    assert (await fail_login(client, "someone-new", random_address())).status_code == 401


async def test_forwarded_for_is_ignored_unless_the_sender_is_trusted(app_client: AppClient) -> None:
    client = await app_client(login_ip_rate_limit="2/minute")  # no trusted proxies
    for _ in range(2):
        assert (await fail_login(client, "ghost", random_address())).status_code == 401
    # Every request came from the same socket address, whatever the header claimed.
    assert_problem(await fail_login(client, "ghost", random_address()), 429, "rate-limited")


async def test_signups_are_throttled_per_address(app_client: AppClient) -> None:
    client = await app_client(signup_rate_limit="2/minute", **PROXY)
    address = random_address()
    for _ in range(2):
        response = await client.post("/api/auth/signup", json=signup_body(), headers=from_address(address))
        assert response.status_code == 201
    blocked = await client.post("/api/auth/signup", json=signup_body(), headers=from_address(address))
    assert_problem(blocked, 429, "rate-limited")
    assert "retry-after" in blocked.headers
    other = await client.post("/api/auth/signup", json=signup_body(), headers=from_address(random_address()))
    assert other.status_code == 201


async def test_instances_sharing_redis_share_one_login_budget(app_client: AppClient, redis_url: str) -> None:
    first = await app_client(login_rate_limit="4/minute", redis_url=redis_url, **PROXY)
    second = await app_client(login_rate_limit="4/minute", redis_url=redis_url, **PROXY)
    account = await sign_up(first)
    address = random_address()
    for client in (first, second, first, second):
        assert (await fail_login(client, account.username, address)).status_code == 401
    for client in (first, second):
        assert_problem(await fail_login(client, account.username, address), 429, "rate-limited")


async def test_an_unreachable_redis_is_503_not_500(app_client: AppClient) -> None:
    client = await app_client(login_rate_limit="4/minute", redis_url="redis://127.0.0.1:9/0", **PROXY)
    response = await fail_login(client, "anyone", random_address())
    assert_problem(response, 503, "unavailable")
