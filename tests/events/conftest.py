"""Fixtures for the event tests: a real Redis, a clean outbox, relays built the way the app builds them."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import make_settings
from todo_api.db import parse_database_url
from todo_api.events.models import outbox
from todo_api.events.publishers import Publisher, make_publisher
from todo_api.events.relay import Relay, relay_engine

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
# Fast relays for tests: the defaults wait longer between polls and after failures.
FAST = {"poll_interval": 0.05, "standby_interval": 0.2, "backoff_initial": 0.05, "backoff_max": 0.3}


def events_settings(**overrides: Any) -> dict[str, Any]:
    """Setting overrides for an app (or relay) with events on; the pooler pass of the suite gives a direct URL."""
    direct = os.environ.get("TEST_DATABASE_URL_DIRECT")
    if direct:
        overrides.setdefault("database_url_direct", direct)
    return overrides


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def stream(redis: Redis) -> AsyncIterator[str]:
    """A stream (EVENTS_TOPIC) of this test's own, gone soon after it (an app's relay that is still stopping
    may add to it after this teardown, so it expires rather than being deleted now)."""
    name = f"test-events-{uuid.uuid4().hex}"
    yield name
    await redis.expire(name, 60)


@pytest.fixture
async def db(migrated: str) -> AsyncIterator[AsyncEngine]:
    """The test database, with an empty outbox: every test sees only its own events."""
    parsed = parse_database_url(migrated)
    engine = create_async_engine(parsed.url, connect_args=parsed.connect_args, poolclass=NullPool)
    async with engine.begin() as connection:
        await connection.execute(delete(outbox))
    yield engine
    await engine.dispose()


async def outbox_rows(engine: AsyncEngine, key: str | None = None) -> list[dict[str, Any]]:
    statement = select(outbox).order_by(outbox.c.seq)
    if key is not None:
        statement = statement.where(outbox.c.partition_key == key)
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in await connection.execute(statement)]


async def pending_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(select(func.count()).where(outbox.c.published_at.is_(None)))
        return int(count or 0)


async def stream_entries(redis: Redis, stream: str) -> list[tuple[dict[str, Any], str]]:
    """The stream's entries in order, as (CloudEvent, key)."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(stream) or []  # type: ignore[assignment]
    result: list[tuple[dict[str, Any], str]] = []
    for _, fields in entries:
        assert set(fields) == {b"event", b"key"}
        result.append((orjson.loads(fields[b"event"]), fields[b"key"].decode()))
    return result


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_stream(redis: Redis, stream: str, count: int, within: float = 15.0) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return int(await redis.xlen(stream)) >= count

    await eventually(enough, within, f"{count} events on {stream}")
    return [event for event, _ in await stream_entries(redis, stream)]


class Relays:
    """Relays built like `todo-api relay` builds them (own engine, leadership lock), run as tasks."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.running: list[tuple[Relay, asyncio.Task[None]]] = []

    def build(self, publisher: Publisher | None = None, **overrides: Any) -> Relay:
        options = {key: overrides.pop(key) for key in list(overrides) if key in FAST or key == "batch_size"}
        settings = make_settings(self.database_url, **events_settings(**overrides))
        engine, leadership = relay_engine(settings)
        return Relay(engine, publisher or make_publisher(settings), leadership, **{**FAST, **options})

    def start(self, relay: Relay) -> Relay:
        self.running.append((relay, asyncio.create_task(relay.run())))
        return relay

    async def kill(self, relay: Relay) -> None:
        """As abrupt as it gets in-process: cancel it wherever it is, then drop its connection."""
        for index, (candidate, task) in enumerate(self.running):
            if candidate is relay:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await relay.close()
                del self.running[index]
                return

    async def stop_all(self) -> None:
        for relay, task in self.running:
            relay.stop()
            await asyncio.wait_for(task, 10)
            await relay.close()
        self.running.clear()


@pytest.fixture
async def relays(migrated: str) -> AsyncIterator[Relays]:
    manager = Relays(migrated)
    yield manager
    for relay, task in manager.running:  # whatever a failed test left running
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await relay.close()


def assert_cloud_event(event: dict[str, Any], type_: str, subject: str, data: dict[str, Any], source: str) -> None:
    assert set(event) == {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "partitionkey",
        "data",
    }
    assert event["specversion"] == "1.0"
    assert UUID_RE.match(event["id"]), event["id"]
    assert event["source"] == source
    assert event["type"] == type_
    assert event["subject"] == subject
    assert TIME_RE.match(event["time"]), event["time"]
    assert event["datacontenttype"] == "application/json"
    assert event["data"] == data
