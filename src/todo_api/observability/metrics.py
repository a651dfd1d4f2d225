"""Prometheus metrics (prometheus_client), one view over every worker process.

`todo-api serve` gives its workers a directory of their own for prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, made before they start, removed when the server stops), so whichever worker answers
`/metrics` reports them all. Anything else that builds the app (the tests, an ASGI server of your own) gets the
ordinary one-process registry. Labels are route templates (`/api/{user_id}/tasks`), never raw paths: a user id in
a path never makes a series."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from todo_api.errors import Unauthorized

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
UNCOUNTED_PATHS = frozenset({"/metrics", "/health", "/ready"})

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DB_IN_USE = Gauge(
    "db_pool_connections_in_use", "Database connections held by requests now.", multiprocess_mode="livesum"
)
DB_WAITING = Gauge(
    "db_pool_waiting_requests", "Requests waiting for a database connection now.", multiprocess_mode="livesum"
)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections_total", "Attempts refused with 429, by limit (login, login_ip, signup).", ["limit"]
)
HASHES_WAITING = Gauge(
    "password_hashes_waiting", "Logins and signups waiting for their turn at bcrypt now.", multiprocess_mode="livesum"
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    labels = (method, route, str(status))
    HTTP_REQUESTS.labels(*labels).inc()
    HTTP_DURATION.labels(*labels).observe(seconds)


def sample(context: Any) -> None:
    """This worker's gauges, from the plain counters its pool and hasher keep: written once a second (and at each
    scrape), not by every request — in multiprocess mode each write is a locked write to a shared file."""
    DB_IN_USE.set(context.database.in_use)
    DB_WAITING.set(context.database.waiting)
    HASHES_WAITING.set(context.accounts.hasher.waiting)


@contextlib.asynccontextmanager
async def sampling(context: Any, interval: float = 1.0) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            sample(context)
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="metrics-sampler")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def mark_worker_gone() -> None:
    """A worker that stops takes its live gauges with it (multiprocess mode only)."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class _Outbox(Collector):
    """The outbox's backlog as measured at this scrape (of the table itself, whoever relays it)."""

    def __init__(self, pending: int, oldest_age: float) -> None:
        self.pending, self.oldest_age = pending, oldest_age

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("outbox_pending_events", "Events recorded but not yet published.", self.pending)
        yield GaugeMetricFamily(
            "outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event (0: none).", self.oldest_age
        )


def exposition(extra: Sequence[Collector] = ()) -> bytes:
    """Every worker's metrics (one process's, outside `todo-api serve`), then the extra collectors'."""
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if extra:
        own = CollectorRegistry()
        for collector in extra:
            own.register(collector)
        text += generate_latest(own)
    return text


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: the Prometheus text format; with METRICS_TOKEN set, only for `Authorization: Bearer` it."""
    context: Any = request.app.state.context
    token = context.settings.metrics_token
    if token is not None:
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), expected):
            raise Unauthorized("The metrics token is required.", token_sent=bool(offered))
    sample(context)
    extra: list[Collector] = []
    if context.events is not None:
        extra.append(await _outbox_backlog(context.database))
    return Response(exposition(extra), media_type=CONTENT_TYPE_LATEST)


async def _outbox_backlog(database: Any) -> _Outbox:
    from todo_api.events.models import outbox

    statement = select(func.count().label("pending"), func.min(outbox.c.created_at).label("oldest")).where(
        outbox.c.published_at.is_(None)
    )
    async with database.session(write=False) as session:
        row = (await session.fetch(statement, {}))[0]
    oldest = row["oldest"]
    if isinstance(oldest, str):  # SQLite hands the aggregate back as text
        from datetime import UTC, datetime

        oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
    age = max(0.0, time.time() - oldest.timestamp()) if oldest is not None else 0.0
    return _Outbox(int(row["pending"]), age)
