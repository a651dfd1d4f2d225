"""The application factory: `create_app()` wires settings, database, auth, routes and error handling."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from pydantic import SecretStr
from sqlalchemy import text
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from todo_api import __version__, events
from todo_api.auth.jwks import JwksVerifier
from todo_api.auth.passwords import PasswordHasher
from todo_api.auth.router import router as auth_router
from todo_api.auth.service import Accounts
from todo_api.auth.tokens import TokenService
from todo_api.config import Settings, get_settings
from todo_api.context import AppContext
from todo_api.db import Database, is_unavailable
from todo_api.docs import Status, install_openapi, problem_pages, problems
from todo_api.errors import (
    ApiError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    Unavailable,
    ValidationFailed,
)
from todo_api.errors import problem_response as render
from todo_api.events.relay import inline_relay
from todo_api.http import JsonResponse, error_items
from todo_api.middleware import (
    GuardMiddleware,
    ProblemCORSMiddleware,
    RequestContextMiddleware,
)
from todo_api.observability.logs import configure_logging, tag_records_with_request_id
from todo_api.observability.metrics import mark_worker_gone, metrics_endpoint, sampling
from todo_api.observability.tracing import Tracing, start_tracing
from todo_api.ratelimit import Throttles
from todo_api.routing import assert_guarded, operation_id
from todo_api.tasks.cursors import Cursors
from todo_api.tasks.router import router as tasks_router
from todo_api.tasks.router import tags_router

log = logging.getLogger(__name__)
_PING = text("SELECT 1")


def build_context(settings: Settings, tracing: Tracing | None = None) -> AppContext:
    secret = settings.signing_secret()  # raises ConfigError before anything else starts
    settings.check_serving()
    database = Database(settings)
    if tracing is not None and database.engine is not None:
        tracing.instrument_engine(database.engine)
    # With events on, every change is recorded in the outbox, in the unit of work that makes it.
    outbox = None
    if database.writes_record_events:
        outbox = events.Outbox(settings.events_source, tracing.traceparent if tracing is not None else None)
    jwks = None
    if settings.jwks_url:
        jwks = JwksVerifier(
            settings.jwks_url,
            issuer=settings.better_auth_issuer,
            audience=settings.better_auth_audience,
            timeout=settings.db_timeout,
        )
    return AppContext(
        settings=settings,
        database=database,
        tokens=TokenService(settings, secret, jwks),
        accounts=Accounts(
            PasswordHasher(settings.bcrypt_rounds, max_wait=settings.db_timeout), Throttles(settings), outbox
        ),
        events=outbox,
        cursors=Cursors(secret),
        jwks=jwks,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not logging.getLogger().handlers:  # a uvicorn worker process starts with none
        configure_logging(settings.log_level, settings.log_format)
    tag_records_with_request_id()
    tracing = start_tracing()  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set: then nothing is imported
    context = build_context(settings, tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await context.accounts.hasher.warm_up()
        await context.database.start()
        if context.jwks is not None:
            await context.jwks.refresh()  # best effort: a JWKS that is down now is retried on demand
        # What start-up built (routes, models, the OpenAPI machinery: most of the heap) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it, which a request would wait for.
        gc.collect()
        gc.freeze()
        async with inline_relay(settings), sampling(context):  # EVENTS_RELAY=inline: this worker relays too
            yield
        gc.unfreeze()  # collectable again (an app that stops inside a longer-lived process, such as the tests)
        mark_worker_gone()
        if tracing is not None:
            tracing.shutdown()
        await context.database.close()
        context.accounts.hasher.close()
        if context.jwks is not None:
            await context.jwks.close()

    app = FastAPIOffline(
        title="todo-api",
        version=__version__,
        description=(
            "A multi-user todo API. Sign up or log in under **auth**, press **Authorize** and paste the "
            "`access_token`; then use your `id` from `GET /api/auth/me` as `user_id` in task paths. "
            "Every error is RFC 9457 `application/problem+json`."
        ),
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
        redirect_slashes=False,  # `/api/…/tasks/` is not a route: a 404 problem, not a redirect that skips auth
        # FastAPI's native OpenTelemetry looks for configured providers on every request; this API ships no
        # OpenTelemetry SDK, so the check is pure cost.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        generate_unique_id_function=operation_id,
        # One schema per shape: `Task` in and out, not `Task-Input` and `Task-Output`.
        separate_input_output_schemas=False,
    )
    app.state.context = context
    install_openapi(app)
    install_error_handlers(app)

    # The API's routes go straight into the app's own route list, tasks first. FastAPI keeps an included router as
    # one route whose routes it matches twice per request; for the hot paths that was a fifth of a request's CPU
    # time. Their paths, tags, responses and route classes are complete already (the routers add nothing).
    app.router.routes[:0] = [*tasks_router.routes, *tags_router.routes, *auth_router.routes]
    app.include_router(problem_pages)
    if settings.metrics_enabled:
        app.add_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    assert_guarded(app)

    @app.get("/health", tags=["operations"], response_model=Status)
    async def health() -> JsonResponse:
        """Liveness: answers without touching the database."""
        return JsonResponse({"status": "ok"})

    @app.get("/ready", tags=["operations"], response_model=Status, responses=problems(503))
    async def ready() -> JsonResponse:
        """Readiness: 200 when the database answers, else 503."""
        try:
            async with asyncio.timeout(settings.db_timeout), context.database.session(write=False) as session:
                await session.fetch(_PING, {})
        except Exception as error:
            if not is_unavailable(error):
                raise
            log.warning("readiness check failed: %s", type(error).__name__)
            raise Unavailable("The database is not answering.") from None
        return JsonResponse({"status": "ready"})

    # Outermost first: request id on everything, CORS headers on errors too, then 413 and the 500 net.
    app.add_middleware(GuardMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-ID"],
            expose_headers=["ETag", "Location", "X-Request-ID", "Retry-After", "Link"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=settings.metrics_enabled, access_log=settings.access_log)
    if tracing is not None:
        tracing.instrument(app)  # outermost: the server span covers everything below
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, without a server, a database, a secret file or the environment: it depends on none."""
    settings = Settings.model_construct(
        database_url="sqlite:///:memory:", better_auth_secret=SecretStr(secrets.token_urlsafe(48))
    )
    return create_app(settings).openapi()


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allow_header(request: Request) -> dict[str, str]:
    """`Allow` naming every method served at this path: Starlette's 405 names only the first matching route's."""
    routes = request.app.router.routes
    allowed = [m for m in _METHODS if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]
    return {"Allow": ", ".join(allowed)} if allowed else {}


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return render(error)

    async def invalid_request(_: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return render(ValidationFailed(error_items(error.errors())))

    async def http_error(request: Request, error: Exception) -> Response:
        # Starlette's own: no route (404), wrong method (405); anything else we never expect to see.
        assert isinstance(error, HTTPException)
        problem: ApiError
        if error.status_code == 404:
            problem = NotFound("There is no such resource.")
        elif error.status_code == 405:
            problem = MethodNotAllowed(headers={**(error.headers or {}), **allow_header(request)})
        elif error.status_code < 500:
            problem = ValidationFailed.one(["request"], str(error.detail))
        else:
            problem = InternalError()
        return render(problem)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
