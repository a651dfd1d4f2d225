"""Through a real PgBouncer in transaction pool mode, the set-up of Neon's `-pooler` hosts.

The whole suite also runs through one in CI (`.ci/run`, TEST_DATABASE_URL with `?pgbouncer=true`); these tests
start their own PgBouncer with only 2 server connections in front of the suite's database, so concurrent requests
are certain to share server connections between transactions — what breaks prepared statements that outlive a
transaction (Debian's PgBouncer 1.18 has no `max_prepared_statements` to paper over it)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import AppClient, create_task, sign_up
from tests.reliability.services import PgBouncer, PrivatePostgres
from tests.test_cli import environment, run
from todo_api.db import parse_database_url


async def test_concurrent_reads_and_writes_share_server_connections(
    app_client: AppClient, suite_pgbouncer: tuple[PgBouncer, str]
) -> None:
    bouncer, pooled_url = suite_pgbouncer
    assert parse_database_url(pooled_url).pooled
    client = await app_client(database_url=pooled_url, db_pool_size=8, db_max_overflow=0, db_timeout=10)
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
    pools = bouncer.admin("SHOW POOLS")
    assert pools  # the requests really went through this PgBouncer


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
