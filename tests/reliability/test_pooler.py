"""Through a real PgBouncer in transaction pool mode, the set-up of Neon's `-pooler` hosts.

The whole suite also runs through one in CI (`.ci/run`: a plain TEST_DATABASE_URL, with TEST_DATABASE_URL_DIRECT
beside it saying it is a pooler); these tests
start their own PgBouncer with only 2 server connections in front of the suite's database, so concurrent requests
are certain to share server connections between transactions — what breaks prepared statements that outlive a
transaction (Debian's PgBouncer 1.18 has no `max_prepared_statements` to paper over it)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import AppClient, create_task, sign_up
from tests.reliability.conftest import direct_test_database_url
from tests.reliability.services import PgBouncer, PrivatePostgres
from tests.test_cli import environment, run
from todo_api.db import parse_database_url


def plain(url: str) -> str:
    """The pooler's URL as a user's own PgBouncer, Supabase or RDS Proxy gives it: nothing says it is one."""
    return str(make_url(url).difference_update_query(["pgbouncer"]).render_as_string(hide_password=False))


def queries_served(bouncer: PgBouncer, database: str) -> int:
    """How many queries this PgBouncer has passed on for `database` (SHOW STATS)."""
    lines = [line.split("|") for line in bouncer.admin("SHOW STATS").splitlines()]
    for fields in lines:
        if fields[0] == database:
            return int(fields[2])  # database | total_xact_count | total_query_count | …
    return 0


ANNOUNCED = pytest.mark.parametrize("announced_by", ["pgbouncer=true", "DATABASE_URL_DIRECT"])


@ANNOUNCED
async def test_concurrent_reads_and_writes_share_server_connections(
    app_client: AppClient, suite_pgbouncer: tuple[PgBouncer, str], announced_by: str
) -> None:
    bouncer, pooled_url = suite_pgbouncer
    database = make_url(pooled_url).database or ""
    overrides: dict[str, Any] = {"database_url": pooled_url}
    if announced_by == "DATABASE_URL_DIRECT":
        overrides = {"database_url": plain(pooled_url), "database_url_direct": direct_test_database_url()}
        assert not parse_database_url(plain(pooled_url)).pooled
    assert parse_database_url(overrides["database_url"], behind_pooler="database_url_direct" in overrides).pooled
    served_before = queries_served(bouncer, database)
    client = await app_client(**overrides, db_pool_size=8, db_max_overflow=0, db_timeout=10)
    users = [await sign_up(client) for _ in range(3)]
    tasks = {
        user.id: await asyncio.gather(*(create_task(client, user, title=f"task {i}") for i in range(8)))
        for user in users
    }

    def requests(round_: int) -> list[asyncio.Task[httpx.Response]]:
        made = []
        for user in users:
            for task in tasks[user.id]:
                path = f"{user.tasks}/{task['id']}"
                made.append(client.get(path, headers=user.auth))
                made.append(client.get(user.tasks, params={"sort_by": "title"}, headers=user.auth))
                made.append(client.patch(path, json={"description": f"round {round_}"}, headers=user.auth))
        return [asyncio.ensure_future(request) for request in made]

    for round_ in range(3):
        responses = await asyncio.gather(*requests(round_))
        failures = [(r.request.method, r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
        assert not failures, failures

    for user in users:
        listed = await client.get(user.tasks, params={"page_size": 100}, headers=user.auth)
        assert listed.status_code == 200
        assert {task["description"] for task in listed.json()["items"]} == {"round 2"}
    # The requests really went through this PgBouncer: at least one query for each of them.
    assert queries_served(bouncer, database) - served_before >= 3 * 8 * 3 * 3


@pytest.mark.parametrize("publisher", ["none", "log"], ids=["events-off", "events-on"])
async def test_a_pooler_nobody_announced_is_healed_without_a_500(
    app_client: AppClient, suite_pgbouncer: tuple[PgBouncer, str], caplog: pytest.LogCaptureFixture, publisher: str
) -> None:
    """No `-pooler` host, no `?pgbouncer=true`, no DATABASE_URL_DIRECT: the API caches prepared statements until the
    pooler loses one (SQLSTATE 26000), then warns once and switches to the pooled way. A statement that stood alone
    runs again on the new pool (the client sees nothing); one in a transaction (a write recording its event) was
    rolled back, and its request is answered 503 with Retry-After — as is any other such request then holding a
    connection of the old pool. Never a 500, and every request after the switch works."""
    bouncer, pooled_url = suite_pgbouncer
    url = plain(pooled_url)
    assert not parse_database_url(url).pooled
    served_before = queries_served(bouncer, make_url(url).database or "")
    client = await app_client(
        database_url=url, db_pool_size=6, db_max_overflow=0, db_timeout=10, events_publisher=publisher
    )
    statuses: list[int] = []

    async def call(method: str, path: str, user: Any, **kwargs: Any) -> httpx.Response:
        response = await client.request(method, path, headers=user.auth, **kwargs)
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.headers["retry-after"].isdigit()
        return response

    user = await sign_up(client)
    task_ids: list[str] = []
    for i in range(6):  # one after the other: the first place a connection lands on another server's session
        created = await call("POST", user.tasks, user, json={"title": f"task {i}"})
        if created.status_code == 201:
            task_ids.append(created.json()["id"])
    # Then concurrently, many connections over 2 server connections: statements cached on one server are missing
    # on the other.
    for round_ in range(4):
        requests = []
        for task_id in task_ids:
            requests.append(call("GET", f"{user.tasks}/{task_id}", user))
            requests.append(call("PATCH", f"{user.tasks}/{task_id}", user, json={"description": f"r{round_}"}))
            requests.append(call("GET", user.tasks, user, params={"sort_by": "title"}))
        await asyncio.gather(*requests)
    print(f"unannounced pooler: {statuses.count(503)} of {len(statuses)} requests answered 503")
    assert set(statuses) <= {200, 201, 503}, statuses
    switched = [r for r in caplog.records if "pooler" in r.getMessage() and r.levelname == "WARNING"]
    assert len(switched) == 1  # 2 server connections for 6 client ones: the loss of a statement is certain
    if publisher == "none":
        assert 503 not in statuses
    else:  # only requests holding one of the old pool's 6 connections at the switch can meet it
        assert statuses.count(503) <= 6, statuses
    # After the switch (if one came), every request works.
    after = await asyncio.gather(
        *(client.get(f"{user.tasks}/{task_id}", headers=user.auth) for task_id in task_ids * 5)
    )
    assert {r.status_code for r in after} == {200}
    assert queries_served(bouncer, make_url(url).database or "") - served_before >= len(statuses) + len(after)


async def test_ready_and_auth_through_pgbouncer(app_client: AppClient, suite_pgbouncer: tuple[PgBouncer, str]) -> None:
    _, pooled_url = suite_pgbouncer
    client = await app_client(database_url=pooled_url, db_pool_size=4, db_max_overflow=0, db_timeout=10)
    readiness = await asyncio.gather(*(client.get("/ready") for _ in range(20)))
    assert {response.status_code for response in readiness} == {200}
    user = await sign_up(client)
    logins = await asyncio.gather(
        *(client.post("/api/auth/login", json={"username": user.username, "password": "correct horse battery"})
          for _ in range(6))
    )  # fmt: skip
    assert {response.status_code for response in logins} == {200}
    me = await asyncio.gather(*(client.get("/api/auth/me", headers=user.auth) for _ in range(20)))
    assert {response.status_code for response in me} == {200}


async def test_migrate_goes_over_the_direct_url(tmp_path: Path, private_postgres: PrivatePostgres) -> None:
    """`todo-api migrate` uses DATABASE_URL_DIRECT when DATABASE_URL is a pooler (here one that is not even up)."""
    direct = private_postgres.create_database("migrate_direct")
    env = environment(
        tmp_path,
        DATABASE_URL="postgresql://postgres@ep-gone-pooler.invalid:9/migrate_direct?sslmode=disable",
        DATABASE_URL_DIRECT=direct,
    )
    result = await asyncio.to_thread(run, ["migrate"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    parsed = parse_database_url(direct)
    engine = create_async_engine(parsed.url, connect_args=parsed.connect_args, poolclass=NullPool)
    async with engine.connect() as connection:
        tables = set((await connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")))
                     .scalars())  # fmt: skip
    await engine.dispose()
    assert {"users", "tasks", "alembic_version"} <= tables


def test_pgbouncer_is_in_transaction_mode(suite_pgbouncer: tuple[PgBouncer, str]) -> None:
    bouncer, _ = suite_pgbouncer
    config = dict(line.split("|")[:2] for line in bouncer.admin("SHOW CONFIG").splitlines() if line.count("|") >= 2)
    assert config["pool_mode"] == "transaction"
    version = subprocess.run([bouncer.binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("PgBouncer ")
