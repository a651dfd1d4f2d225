"""What a security review broke, each now a clause of the contract: raced login throttles, IPv6 budgets, huge
headers and tokens, email spellings, unbounded bcrypt queues, a planted secret file, production defaults."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from tests.auth.test_throttling import PROXY, fail_login, from_address, random_address
from tests.conftest import PASSWORD, SECRET, AppClient, assert_problem, error_locs, sign_up, signup_body
from tests.test_cli import environment, free_port, run, serving
from todo_api import config
from todo_api.auth.tokens import TokenService
from todo_api.config import ConfigError, Settings

BACKENDS = pytest.mark.parametrize("storage", ["memory", "redis"])


async def throttled_app(
    app_client: AppClient, storage: str, request: pytest.FixtureRequest, **overrides: Any
) -> httpx.AsyncClient:
    if storage == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    return await app_client(**PROXY, **overrides)


@BACKENDS
async def test_a_burst_of_wrong_passwords_gets_no_more_answers_than_the_limit(
    app_client: AppClient, storage: str, request: pytest.FixtureRequest
) -> None:
    client = await throttled_app(app_client, storage, request, login_rate_limit="3/minute", bcrypt_rounds=6)
    account = await sign_up(client)
    address = random_address()
    burst = await asyncio.gather(*(fail_login(client, account.username, address) for _ in range(3 + 7)))
    answered = [r.status_code for r in burst if r.status_code != 429]
    assert answered == [401] * 3, [r.status_code for r in burst]
    for response in burst:
        if response.status_code == 429:
            assert_problem(response, 429, "rate-limited")
            assert int(response.headers["retry-after"]) >= 1


@BACKENDS
async def test_a_right_password_gives_its_slot_back(
    app_client: AppClient, storage: str, request: pytest.FixtureRequest
) -> None:
    client = await throttled_app(app_client, storage, request, login_rate_limit="3/minute")
    account = await sign_up(client)
    address = random_address()
    good = {"username": account.username, "password": PASSWORD}
    for _ in range(5):  # successes in between never use up the budget
        assert (await client.post("/api/auth/login", json=good, headers=from_address(address))).status_code == 200
    for _ in range(3):
        assert (await fail_login(client, account.username, address)).status_code == 401
    assert_problem(await fail_login(client, account.username, address), 429, "rate-limited")


async def test_clients_of_one_ipv6_64_share_a_budget(app_client: AppClient) -> None:
    client = await app_client(login_ip_rate_limit="2/minute", **PROXY)
    for host in ("2001:db8:1:2::a", "2001:db8:1:2:ffff::b"):
        assert (await fail_login(client, "nobody", host)).status_code == 401
    assert_problem(await fail_login(client, "nobody", "2001:db8:1:2:1:2:3:4"), 429, "rate-limited")
    assert (await fail_login(client, "nobody", "2001:db8:1:3::a")).status_code == 401  # another /64


async def test_an_ipv4_mapped_socket_address_is_its_ipv4_address_for_trusted_proxies(app_client: AppClient) -> None:
    client = await app_client(client_address="::ffff:127.0.0.1", login_ip_rate_limit="2/minute", **PROXY)
    for _ in range(2):
        assert (await fail_login(client, "nobody", "192.0.2.77")).status_code == 401
    # The proxy was believed: the budget spent is 192.0.2.77's, not the proxy's.
    assert_problem(await fail_login(client, "nobody", "192.0.2.77"), 429, "rate-limited")
    assert (await fail_login(client, "nobody", "192.0.2.78")).status_code == 401
    # And an IPv4-mapped client behind it is that IPv4 client.
    assert_problem(await fail_login(client, "nobody", "::ffff:192.0.2.77"), 429, "rate-limited")


async def test_every_spelling_of_an_email_is_one_identifier(app_client: AppClient) -> None:
    client = await app_client(login_rate_limit="2/minute", **PROXY)
    account = await sign_up(client)
    address = random_address()
    local = account.email.split("@")[0]
    for spelling in (f"{local}@ｅｘａｍｐｌｅ.com", f"{local.upper()}@EXAMPLE.COM"):
        response = await client.post(
            "/api/auth/login", json={"email": spelling, "password": "wrong password"}, headers=from_address(address)
        )
        assert response.status_code == 401
    blocked = await client.post(
        "/api/auth/login", json={"email": account.email, "password": "wrong password"}, headers=from_address(address)
    )
    assert_problem(blocked, 429, "rate-limited")


async def test_headers_over_16_kib_are_431_before_anything_else(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/api/nobody/tasks", "/nope"):
        response = await client.get(path, headers={"X-Padding": "x" * (20 * 1024)})
        assert_problem(response, 431, "headers-too-large")
        assert response.headers["x-request-id"]
    # Just under the limit is fine.
    assert (await client.get("/health", headers={"X-Padding": "x" * (15 * 1024)})).status_code == 200


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_server_refuses_a_huge_header_without_reading_it_all(tmp_path: Path) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET)
    assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path, "--no-access-log") as (base, _):
        port = int(base.rsplit(":", 1)[1])
        answer = raw_request(
            port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"x" * (1024 * 1024) + b"\r\n\r\n"
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431")
        assert b"content-type: application/problem+json" in head.lower()
        assert orjson.loads(body)["type"] == "/problems/headers-too-large"
        # Between the app's limit and the protocol's: the app answers, the same way (its own request id kept).
        response = httpx.get(f"{base}/health", headers={"X-Padding": "x" * (18 * 1024), "X-Request-ID": "mine"})
        assert_problem(response, 431, "headers-too-large")
        assert response.headers["x-request-id"] == "mine"
        # A body is not a head: 40 KB of it, read with its head, is fine; over 64 KiB it is 413, not 431.
        padded = orjson.dumps(signup_body())[:-1] + b" " * 40_000 + b"}"
        signup = httpx.post(f"{base}/api/auth/signup", content=padded, headers={"Content-Type": "application/json"})
        assert signup.status_code == 201, signup.text
        too_big = httpx.post(f"{base}/api/auth/login", content=b"{" + b" " * 70_000 + b"}")
        assert_problem(too_big, 413, "payload-too-large")
        assert httpx.get(f"{base}/health").status_code == 200  # and the server is fine


async def test_a_token_over_8_kib_is_401_unparsed(client: httpx.AsyncClient, alice: Any) -> None:
    token = "e" * (12 * 1024)
    started = time.perf_counter()
    response = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401, "unauthorized")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert time.perf_counter() - started < 1


def forged(header: bytes, payload: dict[str, Any]) -> str:
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(orjson.dumps(payload))}.c2ln"


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"HS256","x":' + b"[" * 2000 + b"]" * 2000 + b"}",  # deeper than any parser goes
        b"[1, 2]",  # not an object
        b"\xff\xfe",  # not JSON
        b'{"alg":"HS256","crit":["exp"]}',  # an unknown critical extension
    ],
)
async def test_hostile_token_headers_are_401(client: httpx.AsyncClient, header: bytes) -> None:
    token = forged(header, {"sub": "x", "exp": 9_999_999_999})
    response = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401, "unauthorized")


async def test_the_token_cache_keeps_digests_and_only_the_claims_it_needs() -> None:
    tokens = TokenService(Settings(_env_file=None, better_auth_secret=SECRET), SECRET)
    token = jwt.encode(
        {"sub": "u1", "exp": int(time.time()) + 60, "name": "Ada", "email": "a@example.com", "blob": "x" * 4000},
        SECRET,
        algorithm="HS256",
    )
    principal = await tokens.verify(token)
    assert principal.claims["name"] == "Ada"
    assert await tokens.verify(token) is principal  # the cache answered
    entries = tokens._verified._entries
    [(key, (cached, _, _))] = entries.items()
    assert isinstance(key, bytes)
    assert len(key) == 20
    assert set(cached.claims) == {"sub", "name", "email", "exp"}  # no "blob", and not the token itself


async def test_password_checks_that_would_wait_past_db_timeout_are_503(app_client: AppClient) -> None:
    client = await app_client(bcrypt_rounds=10, db_timeout=0.5)
    account = await sign_up(client)
    started = time.perf_counter()
    one = await client.post("/api/auth/login", json={"username": account.username, "password": PASSWORD})
    one_hash = time.perf_counter() - started
    assert one.status_code == 200

    async def timed_login(index: int) -> tuple[httpx.Response, float]:
        begin = time.perf_counter()
        password = PASSWORD if index % 2 else "wrong password"
        response = await client.post("/api/auth/login", json={"username": account.username, "password": password})
        return response, time.perf_counter() - begin

    results = await asyncio.gather(*(timed_login(i) for i in range(30)))
    statuses = {response.status_code for response, _ in results}
    assert statuses <= {200, 401, 503}
    assert 503 in statuses
    assert statuses & {200, 401}
    for response, elapsed in results:
        if response.status_code == 503:
            assert_problem(response, 503, "unavailable")
            assert response.headers["retry-after"].isdigit()
        assert elapsed < 0.5 + 2 * one_hash + 1.0  # DB_TIMEOUT, the hash it was already running, and slack


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def development(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_the_development_secret_file_is_created_private_and_kept(in_tmp: Path) -> None:
    secret = development().signing_secret()
    path = in_tmp / config.DEV_SECRET_FILE
    assert (path.stat().st_mode & 0o777) == 0o600
    assert development().signing_secret() == secret


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640])
def test_a_secret_file_others_may_read_stops_the_server(in_tmp: Path, mode: int) -> None:
    path = in_tmp / config.DEV_SECRET_FILE
    path.write_text("p" * 64 + "\n")
    path.chmod(mode)
    with pytest.raises(ConfigError, match="read by others"):
        development().signing_secret()


def test_a_secret_file_that_is_a_symlink_is_never_followed(in_tmp: Path) -> None:
    target = in_tmp / "elsewhere"
    (in_tmp / config.DEV_SECRET_FILE).symlink_to(target)
    with pytest.raises(ConfigError, match="cannot be opened safely"):
        development().signing_secret()
    assert not target.exists()  # nothing was written through it


def test_a_secret_file_of_another_user_stops_the_server(in_tmp: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = in_tmp / config.DEV_SECRET_FILE
    path.write_text("p" * 64 + "\n")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="another user"):
        development().signing_secret()


def test_a_planted_secret_file_stops_todo_api_serve_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / config.DEV_SECRET_FILE
    path.write_text("p" * 64 + "\n")
    path.chmod(0o666)
    result = run(["serve", "--port", str(free_port())], environment(tmp_path), tmp_path)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("todo-api:")] == [
        f"todo-api: {config.DEV_SECRET_FILE} may be read by others (mode 666); delete it or chmod 600"
    ]


@pytest.mark.parametrize("name", ["BETTER_AUTH_URL", "BETTER_AUTH_JWKS_URL"])
def test_production_refuses_a_plain_http_jwks(tmp_path: Path, name: str) -> None:
    env = environment(
        tmp_path, ENVIRONMENT="production", BETTER_AUTH_SECRET=SECRET, **{name: "http://auth.example.com"}
    )
    result = run(["serve", "--port", str(free_port())], env, tmp_path)
    assert result.returncode != 0
    assert f"{name} must be an https:// URL" in result.stderr
    # Loopback is fine (a sidecar, a test).
    Settings(
        _env_file=None, environment="production", better_auth_secret=SECRET, better_auth_url="http://127.0.0.1:3000"
    ).check_serving()


def test_production_warns_about_unchecked_hs256_claims_and_per_worker_counters() -> None:
    settings = Settings(_env_file=None, environment="production", better_auth_secret=SECRET)
    warnings = settings.production_warnings(workers=4)
    assert any("neither iss nor aud" in warning for warning in warnings)
    assert any("4 workers keep rate-limit counters in memory" in warning for warning in warnings)
    safe = Settings(
        _env_file=None, environment="production", better_auth_secret=SECRET, jwt_audience="todo", redis_url="redis://r"
    )
    assert safe.production_warnings(workers=4) == []
    assert Settings(_env_file=None, better_auth_secret=SECRET).production_warnings(workers=4) == []


@pytest.mark.parametrize(
    ("headers", "loc"),
    [
        ({"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}, ["header", "origin"]),
        (
            {"Origin": "https://app.example", "Access-Control-Request-Method": "TRACE"},
            ["header", "access-control-request-method"],
        ),
        (
            {
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "X-Secret",
            },
            ["header", "access-control-request-headers"],
        ),
    ],
)
async def test_a_refused_preflight_names_what_was_refused(
    app_client: AppClient, headers: dict[str, str], loc: list[str]
) -> None:
    client = await app_client(cors_origins="https://app.example")
    response = await client.options("/api/someone/tasks", headers=headers)
    assert_problem(response, 400, "validation")
    assert error_locs(response) == [loc]


@pytest.mark.parametrize("sub", ["a\ud800b", "nul\x00", "x" * 256])
async def test_a_token_whose_sub_cannot_be_a_user_id_is_401(client: httpx.AsyncClient, sub: str) -> None:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    response = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401, "unauthorized")


async def test_cors_exposes_the_link_header(app_client: AppClient) -> None:
    client = await app_client(cors_origins="https://app.example")
    owner = await sign_up(client)
    response = await client.get(owner.tasks, headers={**owner.auth, "Origin": "https://app.example"})
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "location", "x-request-id", "retry-after", "link"} <= exposed
