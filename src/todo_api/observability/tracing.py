"""OpenTelemetry tracing, on only when OTEL_EXPORTER_OTLP_ENDPOINT is set (the standard OTEL_* variables apply,
OTLP over HTTP); otherwise nothing of OpenTelemetry is even imported.

Every request is a server span named `METHOD /route/{template}` (FastAPI's instrumentation), continuing an
incoming W3C `traceparent`; database statements (asyncpg) and outgoing HTTP (httpx: the JWKS, the Dapr sidecar)
are its children. The events a request records carry its `traceparent` (the CloudEvents distributed-tracing
extension), so their consumers continue the same trace."""

from __future__ import annotations

import os

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from todo_api.observability import logs
from todo_api.observability.metrics import UNCOUNTED_PATHS

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


def enabled() -> bool:
    return bool(os.environ.get(ENDPOINT) or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class Tracing:
    """The tracer provider of this process, and what it instrumented."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "todo-api")})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._trace = trace
        asyncpg_instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        for instrumentor in (asyncpg_instrumentor, HTTPXClientInstrumentor()):
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=self.provider)
        logs.current_trace_id = self.current_trace_id

    def instrument_engine(self, engine: AsyncEngine) -> None:
        """SQLite's statements (through SQLAlchemy), as PostgreSQL's are through asyncpg."""
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # Its declared range stops below SQLAlchemy 2.1, whose engine events it uses unchanged (its own tests pass).
        SQLAlchemyInstrumentor().instrument(
            engine=engine.sync_engine, tracer_provider=self.provider, skip_dep_check=True
        )

    def instrument(self, app: FastAPI) -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.provider, excluded_urls=",".join(sorted(UNCOUNTED_PATHS))
        )

    def current_trace_id(self) -> str | None:
        context = self._trace.get_current_span().get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None

    def traceparent(self) -> str | None:
        """The W3C `traceparent` of the current span, for the events it records."""
        context = self._trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def shutdown(self) -> None:
        self.provider.shutdown()


def start_tracing() -> Tracing | None:
    return Tracing() if enabled() else None
