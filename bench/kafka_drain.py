"""How fast the relay drains an outbox backlog into Kafka: N events (default 20,000) of 200 owners written to the
outbox of a fresh PostgreSQL database, a tansu broker on a free port, one relay built like `todo-api relay`;
timed from the relay's start until the outbox is empty, then the topic is read back and counted.

    python bench/kafka_drain.py [--events 20000] [--pg-url postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import orjson
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.events.kafka import Tansu, read_topic

from todo_api.config import Settings
from todo_api.db import parse_database_url, utcnow
from todo_api.events.models import outbox
from todo_api.events.relay import relay_from_settings
from todo_api.migrate import upgrade


async def main(events: int, pg_url: str) -> None:
    admin = create_async_engine(parse_database_url(f"{pg_url}/postgres").url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text("DROP DATABASE IF EXISTS todo_bench_kafka WITH (FORCE)"))
        await connection.execute(text("CREATE DATABASE todo_bench_kafka"))
    await admin.dispose()
    url = f"{pg_url}/todo_bench_kafka"
    await upgrade(url)
    engine = create_async_engine(parse_database_url(url).url)
    owners = [str(uuid.uuid4()) for _ in range(200)]
    rows = []
    for index in range(events):
        owner = owners[index % len(owners)]
        event_id = uuid.uuid4()
        payload = {"specversion": "1.0", "id": str(event_id), "type": "todo.task.created", "partitionkey": owner,
                   "data": {"title": f"task {index}", "padding": "x" * 300}}  # fmt: skip
        rows.append({"event_id": event_id, "partition_key": owner, "event_type": "todo.task.created",
                     "payload": orjson.dumps(payload).decode(), "created_at": utcnow()})  # fmt: skip
    async with engine.begin() as connection:
        await connection.execute(insert(outbox), rows)
    broker = Tansu().start()
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        _env_file=None, database_url=url, events_publisher="kafka", kafka_bootstrap_servers=broker.bootstrap,
        events_topic=topic, better_auth_secret="x" * 40,
    )  # fmt: skip
    relay = relay_from_settings(settings, poll_interval=0.01)
    try:
        started = time.perf_counter()
        task = asyncio.create_task(relay.run())
        while True:
            async with engine.connect() as connection:
                left = await connection.scalar(select(func.count()).where(outbox.c.published_at.is_(None)))
            if not left:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        relay.stop()
        await task
        records = await read_topic(broker.bootstrap, topic, events, within=60)
        print(f"relay drained {events} events in {elapsed:.2f} s: {events / elapsed:,.0f} events/s "
              f"(topic holds {len(records)} records)")  # fmt: skip
    finally:
        await relay.close()
        broker.stop()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.pg_url))
