"""The dapr publisher against a stand-in sidecar: Dapr's publish API exactly, and patience when it fails."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import AppClient, create_task, sign_up
from tests.events.conftest import Relays, assert_cloud_event, events_settings, eventually, outbox_rows, pending_count


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Sidecar:
    """Plays daprd's HTTP API on 127.0.0.1: records every publish, answers 204, or 500 while `failing`."""

    port: int
    failing: bool = False
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    async def publish(self, request: Request) -> Response:
        if self.failing:
            self.refused += 1
            return Response(b'{"errorCode":"ERR_PUBSUB_PUBLISH_MESSAGE"}', status_code=500)
        self.received.append(
            Received(
                request.method,
                request.url.path,
                request.url.query,
                dict(request.headers),
                await request.body(),
            )
        )
        return Response(status_code=204)

    async def start(self) -> None:
        app = Starlette(routes=[Route("/v1.0/publish/{pubsub}/{topic}", self.publish, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(request.body) for request in self.received]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    server = Sidecar(free_port())
    await server.start()
    yield server
    await server.stop()


async def test_dapr_gets_exactly_its_publish_api(app_client: AppClient, sidecar: Sidecar, db: AsyncEngine) -> None:
    client = await app_client(
        **events_settings(
            events_publisher="dapr",
            events_relay="inline",
            dapr_http_port=sidecar.port,
            dapr_pubsub_name="kafka-pubsub",
            events_topic="todo.events",
        )
    )
    alice = await sign_up(client)
    task = await create_task(client, alice, title="Call Dapr")

    async def both() -> bool:
        return len(sidecar.received) >= 2

    await eventually(both, what="two publishes")
    rows = await outbox_rows(db, alice.id)
    for request, row in zip(sidecar.received, rows, strict=True):
        assert request.method == "POST"
        assert request.path == "/v1.0/publish/kafka-pubsub/todo.events"
        assert request.query == f"metadata.partitionKey={alice.id}"
        assert request.headers["content-type"] == "application/cloudevents+json"
        assert request.body == row["payload"].encode()  # the CloudEvent as recorded, byte for byte
    signed_up, created = sidecar.events()
    assert signed_up["type"] == "todo.user.signed_up"
    assert_cloud_event(created, "todo.task.created", task["id"], task, "todo-api")
    assert created["partitionkey"] == alice.id


async def test_events_wait_while_the_sidecar_fails_or_is_down(
    app_client: AppClient, relays: Relays, db: AsyncEngine
) -> None:
    sidecar = Sidecar(free_port(), failing=True)
    await sidecar.start()
    options: dict[str, Any] = {"events_publisher": "dapr", "dapr_http_port": sidecar.port}
    client = await app_client(**events_settings(**options))
    relay = relays.start(relays.build(**options))
    alice = await sign_up(client)
    first = [await create_task(client, alice, title=f"a{index}") for index in range(3)]

    async def refused_twice() -> bool:
        return sidecar.refused >= 2

    await eventually(refused_twice, what="the sidecar to refuse twice")  # retried, with back-off
    assert sidecar.received == []
    assert await pending_count(db) == 4  # safe in the outbox

    sidecar.failing = False

    async def delivered(count: int) -> bool:
        return len(sidecar.received) >= count and await pending_count(db) == 0

    await eventually(lambda: delivered(4), what="the first events once the sidecar recovered")

    await sidecar.stop()  # now the sidecar is not there at all
    second = [await create_task(client, alice, title=f"b{index}") for index in range(2)]
    await asyncio.sleep(0.5)
    assert await pending_count(db) == 2
    await sidecar.start()
    await eventually(lambda: delivered(6), what="the events kept while the sidecar was down")
    await sidecar.stop()
    await relays.stop_all()

    events = sidecar.events()
    assert [event["type"] for event in events] == ["todo.user.signed_up"] + ["todo.task.created"] * 5
    assert [event["data"] for event in events[1:]] == first + second
    assert len({event["id"] for event in events}) == 6
    assert relay.published == 6
