"""Tracing through a real `todo-api serve` and an OTLP/HTTP receiver in the test (protobuf decoded with
opentelemetry-proto): a request continuing a `traceparent` is a server span named by its route template, with
database child spans, and the event it recorded carries the same trace."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import SECRET, signup_body
from tests.reliability.services import free_port
from tests.test_cli import environment, run, serving

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace endpoint: every span it was sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def in_trace(self, trace_id: str) -> list[Span]:
        return [span for span in self.spans if span.trace_id.hex() == trace_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


BACKENDS = ["sqlite", *(["postgresql"] if os.environ.get("TEST_DATABASE_URL") else [])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_is_one_trace_with_database_spans_and_its_event_carries_it(
    tmp_path: Path, receiver: Receiver, backend: str, migrated: str
) -> None:
    database: dict[str, str] = {"DATABASE_URL": migrated} if backend == "postgresql" else {}
    if backend == "postgresql" and os.environ.get("TEST_DATABASE_URL_DIRECT"):
        database["DATABASE_URL_DIRECT"] = os.environ["TEST_DATABASE_URL_DIRECT"]
    env = environment(
        tmp_path,
        **database,
        BETTER_AUTH_SECRET=SECRET,
        EVENTS_PUBLISHER="log",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SERVICE_NAME="todo-api-test",
    )
    if backend == "sqlite":
        assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path, "--no-access-log") as (base, _):
        body = httpx.post(f"{base}/api/auth/signup", json=signup_body(), timeout=10).json()
        owner = body["user"]["id"]
        headers = {"Authorization": f"Bearer {body['access_token']}", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        created = httpx.post(f"{base}/api/{body['user']['id']}/tasks", json={"title": "traced"}, headers=headers)
        assert created.status_code == 201
        httpx.get(f"{base}/health")  # not traced
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
            span.kind == Span.SPAN_KIND_SERVER for span in receiver.in_trace(TRACE_ID)
        ):
            time.sleep(0.1)
    spans = receiver.in_trace(TRACE_ID)
    [server] = [span for span in spans if span.kind == Span.SPAN_KIND_SERVER]
    assert server.name == "POST /api/{user_id}/tasks"
    assert server.parent_span_id.hex() == PARENT_ID  # the incoming traceparent, continued
    statements = [
        span for span in spans if any(a.key == "db.system" or a.key == "db.system.name" for a in span.attributes)
    ]
    assert statements, [(span.name, span.trace_id.hex()[:6]) for span in receiver.spans]
    by_id = {span.span_id: span for span in spans}
    for span in statements:  # each a descendant of the server span
        parent = span
        while parent.parent_span_id in by_id and parent.span_id != server.span_id:
            parent = by_id[parent.parent_span_id]
        assert parent.span_id == server.span_id
    assert not [span for span in receiver.spans if span.name.startswith("GET /health")]
    payloads = [event for event in outbox_payloads(backend, tmp_path, migrated) if event["partitionkey"] == owner]
    [event] = [event for event in payloads if event["type"] == "todo.task.created"]
    assert event["traceparent"].split("-")[1] == TRACE_ID
    signed_up = next(event for event in payloads if event["type"] == "todo.user.signed_up")
    assert signed_up.get("traceparent", "-").split("-")[1] != TRACE_ID  # another request, another trace


def outbox_payloads(backend: str, tmp_path: Path, migrated: str) -> list[dict[str, Any]]:
    statement = "SELECT payload FROM event_outbox ORDER BY seq"
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "cli.db") as connection:
            return [orjson.loads(row[0]) for row in connection.execute(statement)]
    direct = os.environ.get("TEST_DATABASE_URL_DIRECT") or migrated
    rows = subprocess.run(["psql", direct, "-Atc", statement], capture_output=True, text=True, check=True, timeout=30)
    return [orjson.loads(line) for line in rows.stdout.splitlines() if line]


def test_without_an_endpoint_there_is_no_opentelemetry_work(tmp_path: Path) -> None:
    """No tracer provider, no middleware, nothing instrumented. (FastAPI and redis-py import OpenTelemetry's API
    themselves once it is installed; importing is not tracing.)"""
    script = (
        "import asyncpg, httpx\n"
        "from opentelemetry import trace\n"
        "from todo_api.config import Settings\n"
        "from todo_api.main import create_app\n"
        "from todo_api.observability import logs\n"
        "app = create_app(Settings(_env_file=None, better_auth_secret='x' * 40, events_publisher='log'))\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider', trace.get_tracer_provider()\n"
        "assert not [m for m in app.user_middleware if 'OpenTelemetry' in repr(m.cls)], app.user_middleware\n"
        "assert not hasattr(asyncpg.connection.Connection.fetch, '__wrapped__')\n"
        "assert not hasattr(httpx.AsyncClient.send, '__wrapped__')\n"
        "assert logs.current_trace_id is None\n"
        "assert app.state.context.events._traceparent is None\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
