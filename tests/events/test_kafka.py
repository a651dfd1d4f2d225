"""EVENTS_PUBLISHER=kafka against a real Kafka-protocol broker (tansu): keys, headers, per-user order, nothing for
failed or no-op writes, a broker outage, and two relays with one active."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import AppClient, create_task, sign_up
from tests.events.conftest import Relays, events_settings, eventually, pending_count
from tests.events.kafka import Record, Tansu, read_topic
from todo_api.config import Settings


@pytest.fixture
def broker() -> Iterator[Tansu]:
    tansu = Tansu().start()
    try:
        yield tansu
    finally:
        tansu.stop()


@pytest.fixture
def topic() -> str:
    return f"todo-events-{uuid.uuid4().hex[:12]}"


def kafka_settings(broker: Tansu, topic: str, **extra: Any) -> dict[str, Any]:
    return events_settings(
        events_publisher="kafka", kafka_bootstrap_servers=broker.bootstrap, events_topic=topic, **extra
    )


def by_owner(records: list[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}
    for record in records:
        grouped.setdefault(record.key, []).append(record)
    return grouped


async def test_every_committed_change_is_one_keyed_record_in_per_user_order(
    app_client: AppClient, relays: Relays, broker: Tansu, topic: str
) -> None:
    client = await app_client(**kafka_settings(broker, topic))
    relays.start(relays.build(**kafka_settings(broker, topic)))
    users = [await sign_up(client) for _ in range(3)]
    expected: dict[str, list[str]] = {}
    for user in users:
        task = await create_task(client, user, title="first")
        url = f"{user.tasks}/{task['id']}"
        assert (await client.patch(url, json={"title": "second"}, headers=user.auth)).status_code == 200
        assert (await client.patch(url, json={}, headers=user.auth)).status_code == 200  # no change: no event
        stale = await client.put(url, json={"title": "x"}, headers={**user.auth, "If-Match": '"1-0"'})
        assert stale.status_code == 412  # refused: no event
        assert (await client.patch(f"{url}/complete", headers=user.auth)).status_code == 200
        assert (await client.delete(url, headers=user.auth)).status_code == 200
        expected[user.id] = [
            "todo.user.signed_up",
            "todo.task.created",
            "todo.task.updated",
            "todo.task.completed",
            "todo.task.deleted",
        ]
    records = await read_topic(broker.bootstrap, topic, sum(map(len, expected.values())))
    await asyncio.sleep(0.5)
    records = await read_topic(broker.bootstrap, topic, len(records), within=2)  # nothing more trickled in
    grouped = by_owner(records)
    assert {key: [r.event["type"] for r in mine] for key, mine in grouped.items()} == expected
    for key, mine in grouped.items():
        assert len({record.partition for record in mine}) == 1  # one user, one partition
        for record in mine:
            assert record.headers["content-type"] == b"application/cloudevents+json"
            assert record.event["partitionkey"] == key
            assert record.event["specversion"] == "1.0"
    assert len({record.event["id"] for record in records}) == len(records)


async def test_a_broker_outage_loses_nothing_and_keeps_the_order(
    app_client: AppClient, relays: Relays, broker: Tansu, topic: str, db: AsyncEngine
) -> None:
    client = await app_client(**kafka_settings(broker, topic))
    relays.start(relays.build(**kafka_settings(broker, topic, db_timeout=1.5)))  # Kafka requests time out in 1.5 s
    owner = await sign_up(client)
    before = [await create_task(client, owner, title=f"before {i}") for i in range(3)]
    await read_topic(broker.bootstrap, topic, 4)  # signup + 3 creates are out
    broker.stop()
    during = [await create_task(client, owner, title=f"during {i}") for i in range(5)]  # writes keep answering 2xx

    async def waiting() -> bool:
        return await pending_count(db) >= 5

    await eventually(waiting, what="the events written during the outage to wait in the outbox")
    # Past the relay's request timeout, every attempt in flight has failed and its producer is gone. (tansu's
    # memory storage starts empty, and acknowledges but drops what a producer holding the old metadata sends: a
    # real Kafka keeps its topics. What the relay sends once the broker is back is all the topic will hold.)
    await asyncio.sleep(2.5)
    broker.start()

    async def drained() -> bool:
        return await pending_count(db) == 0

    await eventually(drained, within=30, what="the outbox to drain after the broker returned")
    records = await read_topic(broker.bootstrap, topic, 5)
    titles = [record.event["data"]["title"] for record in records if record.event["type"] == "todo.task.created"]
    assert titles == [task["title"] for task in during]  # all of them, in commit order
    assert all(task["title"].startswith("before") for task in before)


async def test_two_relays_one_active_every_event_once(
    app_client: AppClient, relays: Relays, broker: Tansu, topic: str
) -> None:
    client = await app_client(**kafka_settings(broker, topic))
    first = relays.start(relays.build(**kafka_settings(broker, topic)))
    second = relays.start(relays.build(**kafka_settings(broker, topic)))
    owners = [await sign_up(client) for _ in range(2)]
    for owner in owners:
        for index in range(10):
            await create_task(client, owner, title=f"{index:02}")
    records = await read_topic(broker.bootstrap, topic, 22)
    assert [first.active, second.active].count(True) == 1
    for owner in owners:
        mine = [
            r.event["data"]["title"] for r in records if r.key == owner.id and r.event["type"] == "todo.task.created"
        ]
        assert mine == [f"{index:02}" for index in range(10)]
    assert len(records) == 22


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"events_publisher": "kafka"}, "needs KAFKA_BOOTSTRAP_SERVERS"),
        ({"kafka_bootstrap_servers": "a:9092", "kafka_security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
        ({"kafka_bootstrap_servers": "a:9092", "kafka_sasl_mechanism": "PLAIN"}, "need KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_security_protocol": "QUIC"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "MD5", "kafka_security_protocol": "SASL_SSL"}, "kafka_sasl_mechanism"),
        ({"kafka_bootstrap_servers": "a:1, b:2"}, "kafka_bootstrap_servers"),
    ],
)
def test_kafka_settings_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **values)


def test_hosted_kafka_settings_as_consoles_print_them() -> None:
    settings = Settings(
        _env_file=None,
        events_publisher="kafka",
        kafka_bootstrap_servers="pkc-1.eu-west-1.aws.confluent.cloud:9092",
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism="scram-sha-512",
        kafka_sasl_username="key",
        kafka_sasl_password="hunter2-kafka",
    )
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert "hunter2-kafka" not in repr(settings)
