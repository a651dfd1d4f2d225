"""Pure ASGI middleware, outermost first: request ids, CORS, the last-resort 500, and the body-size limit."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.db import is_unavailable
from todo_api.errors import ApiError, InternalError, PayloadTooLarge, Unavailable, problem_response

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestContextMiddleware:
    """Gives every request an id (the client's own when it is sane), echoed on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get("x-request-id")
        request_id = offered if offered and _VALID_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        extra = [(b"x-request-id", request_id.encode()), (b"x-content-type-options", b"nosniff")]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            request_id_var.reset(token)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with refused preflights answered as problem+json like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode(errors="replace")
        problem = problem_response(_BadPreflight(reason))
        for name, value in response.headers.items():
            if name.lower().startswith("access-control-") or name.lower() == "vary":
                problem.headers[name] = value
        return problem


class _BadPreflight(ApiError):
    status, slug, title = 400, "validation", "Invalid Request"


class LastResortMiddleware:
    """Turns anything unhandled into a problem+json 500 that says nothing internal, and logs the traceback.

    It sits inside CORS and the request-id layer, so even a 500 carries their headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.info("client went away before sending its whole request")
        except Exception as error:
            if is_unavailable(error):
                log.warning("database unavailable: %s", type(error).__name__)
                response = problem_response(Unavailable("The database is not answering."))
            else:
                log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
                response = problem_response(InternalError())
            if not started:
                await response(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over the limit, declared or chunked, without ever holding more than the limit."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No length declared (chunked): read up to the limit now, so 413 is decided before auth runs.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"The request body is larger than {self.limit} bytes.")
        error.headers["Connection"] = "close"
        await problem_response(error)(scope, receive, send)
