"""Where events go (`EVENTS_PUBLISHER`): the log, a Dapr sidecar, a Redis stream, or Kafka."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from todo_api.config import Settings

log = logging.getLogger("todo_api.events")

CLOUDEVENTS_JSON = "application/cloudevents+json"


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An outbox row on its way out: `payload` is the CloudEvent JSON, `key` the owner (partition key)."""

    seq: int
    key: str
    payload: str


class PublishError(Exception):
    """The broker took only the first `delivered` events of the batch (in order); the rest must wait."""

    def __init__(self, delivered: int, reason: str) -> None:
        super().__init__(reason)
        self.delivered = delivered


class Publisher(Protocol):
    name: str

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        """Deliver `events` in order, or raise PublishError saying how many of the first ones got through."""

    async def close(self) -> None: ...


class LogPublisher:
    """Each CloudEvent as one INFO line: for development, or for a log shipper that forwards them."""

    name = "log"

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        for event in events:
            log.info("%s", event.payload)

    async def close(self) -> None:
        return None


class DaprPublisher:
    """Dapr's publish API on the sidecar: one POST per event, in order, the CloudEvent as the body (Dapr passes an
    `application/cloudevents+json` body through unwrapped) and the owner as `metadata.partitionKey`, which
    Dapr's Kafka component uses as the message key, so one user's events land on one partition."""

    name = "dapr"

    def __init__(self, port: int, pubsub: str, topic: str, timeout: float = 5.0) -> None:
        self.url = f"http://127.0.0.1:{port}/v1.0/publish/{quote(pubsub, safe='')}/{quote(topic, safe='')}"
        self._client = httpx.AsyncClient(timeout=timeout)

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        for delivered, event in enumerate(events):
            try:
                response = await self._client.post(
                    self.url,
                    params={"metadata.partitionKey": event.key},
                    content=event.payload.encode(),
                    headers={"Content-Type": CLOUDEVENTS_JSON},
                )
            except httpx.HTTPError as error:
                raise PublishError(delivered, f"Dapr sidecar unreachable: {type(error).__name__}") from error
            if not response.is_success:
                raise PublishError(delivered, f"Dapr sidecar answered {response.status_code}")

    async def close(self) -> None:
        await self._client.aclose()


class RedisPublisher:
    """Redis Streams: one `XADD <topic> * event <CloudEvent JSON> key <owner>` per event, pipelined in order."""

    name = "redis"

    def __init__(self, url: str, stream: str, timeout: float = 5.0) -> None:
        self.stream = stream
        self._redis: Redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        pipeline = self._redis.pipeline(transaction=False)
        for event in events:
            pipeline.xadd(self.stream, {"event": event.payload, "key": event.key})
        try:
            results = await pipeline.execute(raise_on_error=False)
        except Exception as error:  # connection refused, reset, timed out: nothing is known to have got through
            raise PublishError(0, f"Redis unreachable: {type(error).__name__}") from error
        for delivered, result in enumerate(results):
            if isinstance(result, Exception):
                raise PublishError(delivered, f"Redis refused XADD: {result}")

    async def close(self) -> None:
        await self._redis.aclose()


class KafkaPublisher:
    """Kafka, spoken directly (aiokafka): one record per event on `topic`, keyed by the owner (so one user's events
    share a partition and keep their order), the CloudEvent JSON as the value, `content-type:
    application/cloudevents+json` as a header (the CloudEvents Kafka binding's structured mode), `acks=all`.

    A batch is sent whole, then each record's acknowledgement awaited in order: the relay marks as published
    exactly the leading events the broker acknowledged. Producer batches are large enough that one relay batch
    for one partition travels as one request, which the broker takes or refuses whole, so a later event of a user
    never lands while an earlier one waits for a retry. On any failure the producer is dropped and the next
    attempt starts a fresh one, with fresh metadata (a broker that came back is asked again what it has). No
    idempotent producer (not every Kafka-protocol broker supports it): duplicates stay possible, and consumers
    dedupe by the CloudEvent `id`, as the contract says."""

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        assert settings.kafka_bootstrap_servers is not None  # the settings refuse kafka without it
        self.topic = settings.events_topic
        self._options: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap_servers,
            "acks": "all",
            "enable_idempotence": False,
            "max_batch_size": 1024 * 1024,
            "linger_ms": 5,
            "request_timeout_ms": int(settings.db_timeout * 1000),
            "security_protocol": settings.kafka_security_protocol,
            "client_id": "todo-api-relay",
        }
        if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
            self._options["ssl_context"] = ssl.create_default_context()
        if settings.kafka_sasl_mechanism is not None:
            assert settings.kafka_sasl_password is not None
            self._options.update(
                sasl_mechanism=settings.kafka_sasl_mechanism,
                sasl_plain_username=settings.kafka_sasl_username,
                sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
            )
        self._producer: AIOKafkaProducer | None = None

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self._options)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        delivered = 0
        try:
            producer = await self._started()
            acknowledgements = [
                await producer.send(self.topic, value=event.payload.encode(), key=event.key.encode(), headers=_HEADERS)
                for event in events
            ]
            for acknowledgement in acknowledgements:
                await acknowledgement
                delivered += 1
        except Exception as error:
            await self._drop()
            raise PublishError(delivered, f"Kafka: {type(error).__name__}: {error}") from error

    async def close(self) -> None:
        await self._drop()


_HEADERS = [("content-type", CLOUDEVENTS_JSON.encode())]


def make_publisher(settings: Settings) -> Publisher:
    publisher = settings.events_publisher
    if publisher == "log":
        return LogPublisher()
    if publisher == "dapr":
        return DaprPublisher(
            settings.dapr_http_port, settings.dapr_pubsub_name, settings.events_topic, settings.db_timeout
        )
    if publisher == "redis":
        assert settings.redis_url is not None  # the settings refuse redis without REDIS_URL
        return RedisPublisher(settings.redis_url, settings.events_topic, settings.db_timeout)
    if publisher == "kafka":
        return KafkaPublisher(settings)
    raise ValueError(f"EVENTS_PUBLISHER={publisher} publishes nothing")
