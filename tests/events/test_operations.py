"""How an operator meets events: settings refused at start, `todo-api relay` as a process, the log publisher."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import AppClient, create_task, make_settings, sign_up
from tests.events.conftest import Relays, events_settings, eventually, outbox_rows, pending_count, wait_for_stream
from tests.test_cli import QUIET_LIMITS, TODO_API
from todo_api.config import ConfigError, Settings
from todo_api.events.publishers import LogPublisher
from todo_api.events.relay import relay_engine


def cli_env(**extra: str) -> dict[str, str]:
    keep = {key: value for key, value in os.environ.items() if not key.startswith(("EVENTS_", "DATABASE_URL"))}
    return {**keep, **QUIET_LIMITS, "BETTER_AUTH_SECRET": "x" * 40, **extra}


def refusal(args: list[str], cwd: Path, **extra: str) -> str:
    result = subprocess.run(
        [TODO_API, *args], env=cli_env(**extra), cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_unknown_publisher_stops_serve_with_one_line(tmp_path: Path) -> None:
    line = refusal(["serve"], tmp_path, EVENTS_PUBLISHER="rabbit")
    assert line == (
        "todo-api: invalid setting EVENTS_PUBLISHER: Input should be 'none', 'log', 'dapr', 'redis' or 'kafka'"
    )
    line = refusal(["serve"], tmp_path, EVENTS_PUBLISHER="kafka")
    assert line == "todo-api: invalid settings: EVENTS_PUBLISHER=kafka needs KAFKA_BOOTSTRAP_SERVERS"


@pytest.mark.parametrize(
    ("values", "name", "message"),
    [
        ({"events_publisher": "redis"}, "events_publisher", "Value error, redis needs REDIS_URL"),
        ({"events_relay": "sometimes"}, "events_relay", "Input should be 'inline'"),
        ({"events_topic": "todo events"}, "events_topic", "String should match pattern"),
        ({"events_source": "has space"}, "events_source", "String should match pattern"),
        ({"dapr_http_port": 0}, "dapr_http_port", "Input should be greater than or equal to 1"),
        ({"dapr_pubsub_name": ""}, "dapr_pubsub_name", "String should match pattern"),
        ({"events_retention_hours": 0}, "events_retention_hours", "Input should be greater than 0"),
    ],
)
def test_bad_event_settings_are_refused(values: dict[str, object], name: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **values)  # type: ignore[arg-type]
    error = caught.value.errors()[0]
    assert error["loc"] == (name,)
    assert error["msg"].startswith(message)


def test_the_relay_refuses_a_pooled_url_without_a_direct_one() -> None:
    pooled = "postgresql://u:p@ep-x-pooler.example.com/db"
    with pytest.raises(ConfigError, match="set DATABASE_URL_DIRECT"):
        relay_engine(Settings(_env_file=None, database_url=pooled, events_publisher="log"))
    engine, _ = relay_engine(Settings(_env_file=None, database_url=pooled, database_url_direct="postgresql://u:p@db/x"))
    assert engine.url.host == "db"


def test_relay_needs_a_publisher(tmp_path: Path) -> None:
    assert "EVENTS_PUBLISHER is none" in refusal(["relay"], tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/x.db")


def test_settings_are_case_insensitive_and_default_to_nothing() -> None:
    settings = Settings(_env_file=None, events_publisher=" Dapr ", events_relay="INLINE")
    assert (settings.events_publisher, settings.events_relay) == ("dapr", "inline")
    default = Settings(_env_file=None)
    assert (default.events_publisher, default.events_relay, default.events_topic) == ("none", None, "todo-events")
    assert (default.events_source, default.dapr_http_port, default.dapr_pubsub_name) == ("todo-api", 3500, "pubsub")


@contextmanager
def relay_process(database_url: str, redis_url: str, stream: str) -> Iterator[subprocess.Popen[str]]:
    env = cli_env(
        **events_settings(DATABASE_URL=database_url),
        EVENTS_PUBLISHER="redis",
        REDIS_URL=redis_url,
        EVENTS_TOPIC=stream,
    )
    if os.environ.get("TEST_DATABASE_URL_DIRECT"):
        env["DATABASE_URL_DIRECT"] = os.environ["TEST_DATABASE_URL_DIRECT"]
    process = subprocess.Popen(
        [TODO_API, "relay"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def test_relay_processes_hand_over_when_the_active_one_is_killed(
    app_client: AppClient, migrated: str, redis: Redis, redis_url: str, stream: str, db: AsyncEngine
) -> None:
    client = await app_client(**events_settings(events_publisher="redis", redis_url=redis_url, events_topic=stream))
    alice = await sign_up(client)
    with relay_process(migrated, redis_url, stream) as first:
        await wait_for_stream(redis, stream, 1, within=30)  # the first one leads
        with relay_process(migrated, redis_url, stream) as second:
            await asyncio.sleep(1.5)  # the second has started and stands by
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            task = await create_task(client, alice, title="after the leader died")
            events = await wait_for_stream(redis, stream, 2, within=15)  # the standby took over
            assert events[-1]["data"] == task
            second.send_signal(signal.SIGTERM)  # a graceful stop is a clean exit
            assert second.wait(timeout=20) == 0
            output = second.stdout.read() if second.stdout else ""
            assert "event relay active" in output
            assert "event relay stopped" in output
    assert await pending_count(db) == 0


async def test_the_log_publisher_logs_each_cloud_event(
    app_client: AppClient, relays: Relays, db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    client = await app_client(**events_settings(events_publisher="log"))
    alice = await sign_up(client)
    await create_task(client, alice, title="logged")
    relay = relays.start(relays.build(LogPublisher(), events_publisher="log"))
    with caplog.at_level(logging.INFO, logger="todo_api.events"):
        await eventually(lambda: _none_pending(db), what="the log relay")
        await relays.stop_all()
    logged = [record.getMessage() for record in caplog.records if record.name == "todo_api.events"]
    assert logged == [row["payload"] for row in await outbox_rows(db, alice.id)]
    assert relay.published == 2


async def _none_pending(db: AsyncEngine) -> bool:
    return await pending_count(db) == 0


def test_default_settings_record_nothing() -> None:
    assert make_settings("sqlite://").events_publisher == "none"
