"""Test fixtures: the real app over HTTP (httpx + ASGI), on PostgreSQL when TEST_DATABASE_URL is set, else SQLite."""

from __future__ import annotations

import itertools
import logging
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from todo_api.config import Settings
from todo_api.db import parse_database_url
from todo_api.main import create_app
from todo_api.migrate import upgrade
from todo_api.observability.logs import QUIET_LOGGERS, JsonFormatter

SECRET = "test-secret-that-is-long-enough-for-hs512-too-0123456789abcdefgh"
# What no log line of the whole run may hold: a JWT, a bcrypt hash, the test password or signing secret.
LEAKS = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+|\$2[aby]\$\d\d\$")
PASSWORD = "correct horse battery"
_names = itertools.count()


class _EveryRecord(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if LEAKS.search(line) or PASSWORD in line or SECRET in line:
            self.leaks.append(line[:300])


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_line() -> Iterator[None]:
    """Every log record of the whole run at INFO and above (every logger, access lines included), checked for
    tokens, hashes, the password and the secret when the run ends."""
    handler = _EveryRecord()
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)  # what the server logs by default (LOG_LEVEL=INFO), held back where it is
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    yield
    root.setLevel(previous)
    root.removeHandler(handler)
    assert not handler.leaks, handler.leaks


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def is_postgres(database_url: str) -> bool:
    return not parse_database_url(database_url).is_sqlite


@pytest.fixture(scope="session")
async def migrated(database_url: str) -> str:
    """A database holding exactly what the migrations create.

    Behind a pooler (TEST_DATABASE_URL_DIRECT set beside TEST_DATABASE_URL), the schema is reset and migrated over
    TEST_DATABASE_URL_DIRECT, as `todo-api migrate` uses DATABASE_URL_DIRECT."""
    direct = (os.environ.get("TEST_DATABASE_URL") and os.environ.get("TEST_DATABASE_URL_DIRECT")) or database_url
    parsed = parse_database_url(direct)
    if not parsed.is_sqlite:
        engine = create_async_engine(parsed.url, connect_args=parsed.connect_args, poolclass=NullPool)
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
        await engine.dispose()
    await upgrade(direct)
    return database_url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "better_auth_secret": SECRET,
        "bcrypt_rounds": 4,
        "db_pool_size": 3,
        "db_max_overflow": 2,
        "db_timeout": 3,
        "login_rate_limit": "0",
        "login_ip_rate_limit": "0",
        "signup_rate_limit": "0",
        "access_log": False,
    }
    if database_url == os.environ.get("TEST_DATABASE_URL") and os.environ.get("TEST_DATABASE_URL_DIRECT"):
        # The pooler pass: a plain PgBouncer URL, known to be one because a direct URL stands beside it.
        values["database_url_direct"] = os.environ["TEST_DATABASE_URL_DIRECT"]
    values.update(overrides)
    return Settings(_env_file=None, **values)


REDIS_URL = os.environ.get("TEST_REDIS_URL")


@pytest.fixture
def redis_url() -> str:
    """The real Redis the tests share (TEST_REDIS_URL): skipped without it, a failure where CI requires it."""
    if not REDIS_URL:
        if os.environ.get("TEST_REQUIRE_SERVICES"):
            pytest.fail("TEST_REDIS_URL must be set when TEST_REQUIRE_SERVICES is")
        pytest.skip("Redis not configured: set TEST_REDIS_URL=redis://127.0.0.1:6379/0")
    return REDIS_URL


AppClient = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def app_client(migrated: str) -> AsyncIterator[AppClient]:
    """Start an app with these setting overrides and hand back an HTTP client for it."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def start(client_address: str = "127.0.0.1", **overrides: Any) -> httpx.AsyncClient:
        app = create_app(make_settings(overrides.pop("database_url", migrated), **overrides))
        manager = LifespanManager(app)
        await manager.__aenter__()
        managers.append(manager)
        transport = httpx.ASGITransport(app=manager.app, client=(client_address, 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture(scope="session")
async def client(migrated: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with default test settings, shared by the whole session (every test makes its own users)."""
    app = create_app(make_settings(migrated))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@dataclass
class Account:
    id: str
    username: str
    email: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def tasks(self) -> str:
        return f"/api/{self.id}/tasks"


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}{next(_names)}_{uuid.uuid4().hex[:8]}"


def signup_body(username: str | None = None, **overrides: Any) -> dict[str, Any]:
    username = username or unique_name()
    body = {
        "username": username,
        "email": f"{username}@example.com",
        "password": PASSWORD,
        "confirm_password": PASSWORD,
    }
    body.update(overrides)
    return body


async def sign_up(client: httpx.AsyncClient, **overrides: Any) -> Account:
    response = await client.post("/api/auth/signup", json=signup_body(**overrides))
    assert response.status_code == 201, response.text
    body = response.json()
    return Account(body["user"]["id"], body["user"]["username"], body["user"]["email"], body["access_token"])


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> Account:
    return await sign_up(client)


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await sign_up(client)


async def create_task(client: httpx.AsyncClient, owner: Account, **fields: Any) -> dict[str, Any]:
    body = {"title": "a task", **fields}
    response = await client.post(owner.tasks, json=body, headers=owner.auth)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of this status and type; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{type_}"
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    return body


def error_locs(response: httpx.Response) -> list[list[str | int]]:
    return [error["loc"] for error in response.json()["errors"]]


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def wait_for_health(base: str, process: subprocess.Popen[Any], seconds: float = 60) -> bool:
    """Poll a `todo-api serve` process's /health until it answers 200; False if it exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.1)
    return False
