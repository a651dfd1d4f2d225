"""Pure ASGI middleware, outermost first: request ids, CORS, then the body-size limit and the last-resort 500."""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.bounds import MAX_BODY_BYTES, MAX_HEADER_BYTES
from todo_api.db import is_unavailable
from todo_api.errors import (
    ApiError,
    ErrorItem,
    HeadersTooLarge,
    InternalError,
    PayloadTooLarge,
    Unavailable,
    error_item,
    problem_response,
)
from todo_api.observability.logs import access_log, request_id_var
from todo_api.observability.metrics import UNCOUNTED_PATHS, observe_request

log = logging.getLogger(__name__)

_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestContextMiddleware:
    """Gives every request an id (the client's own when it is sane), echoed on every response; then counts it in
    the request metrics (not the probes nor `/metrics` itself) and writes its access line, both by the route
    template the router matched (`/api/{user_id}/tasks`, never the raw path: `unmatched` when none did)."""

    def __init__(self, app: ASGIApp, *, metrics: bool = False, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
        if offered is not None and _VALID_REQUEST_ID.fullmatch(offered):
            raw_id = offered
        else:
            raw_id = os.urandom(16).hex().encode()
        token = request_id_var.set(raw_id.decode())
        extra = [(b"x-request-id", raw_id), (b"x-content-type-options", b"nosniff")]
        started = time.perf_counter()
        status = 500  # what the client sees if the app ends without answering

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if self.metrics or self.access_log:
                self._observe(scope, status, time.perf_counter() - started)
            request_id_var.reset(token)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        path: str = scope["path"]
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method: str = scope["method"]
        if self.metrics and path not in UNCOUNTED_PATHS:
            observe_request(method, route, status, seconds)
        if self.access_log:
            client = scope.get("client")
            fields = {
                "method": method,
                "path": path,  # never the query string
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "client": client[0] if client else None,
            }
            access_log.info("%s %s %d %.2fms", method, path, status, seconds * 1000, extra=fields)


def header_bytes(headers: list[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in headers)


def headers_too_large() -> Response:
    response = problem_response(HeadersTooLarge(f"The request headers are larger than {MAX_HEADER_BYTES} bytes."))
    response.headers["Connection"] = "close"
    return response


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with refused preflights answered as problem+json like every other error, whose `errors`
    name what was refused."""

    def preflight_response(self, request_headers: Headers) -> Response:
        if header_bytes(request_headers.raw) > MAX_HEADER_BYTES:
            return headers_too_large()
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        problem = problem_response(_BadPreflight(self._refusals(request_headers)))
        for name, value in response.headers.items():
            if name.lower().startswith("access-control-") or name.lower() == "vary":
                problem.headers[name] = value
        return problem

    def _refusals(self, request_headers: Headers) -> list[ErrorItem]:
        """What Starlette refused (it says so only in plain text), each as an error item."""
        refused: list[ErrorItem] = []
        if not self.is_allowed_origin(request_headers.get("origin", "")):
            refused.append(error_item(["header", "origin"], "This origin may not call the API.", "cors_origin"))
        if request_headers.get("access-control-request-method") not in self.allow_methods:
            refused.append(
                error_item(["header", "access-control-request-method"], "This method is not allowed.", "cors_method")
            )
        requested = request_headers.get("access-control-request-headers")
        if requested and not self.allow_all_headers:
            wanted = {header.strip().lower() for header in requested.split(",") if header.strip()}
            if not wanted <= set(self.allow_headers):
                refused.append(
                    error_item(
                        ["header", "access-control-request-headers"],
                        "These headers are not allowed: " + ", ".join(sorted(wanted - set(self.allow_headers))),
                        "cors_headers",
                    )
                )
        return refused


class _BadPreflight(ApiError):
    status, slug, title = 400, "validation", "Invalid Request"
    description = "The CORS preflight was refused: `errors` names what."

    def __init__(self, errors: list[ErrorItem]) -> None:
        super().__init__("CORS preflight refused; see errors.", errors=errors)


class GuardMiddleware:
    """431 for headers over their limit and 413 for bodies over theirs, declared or chunked, without ever holding
    more than the limit; and anything unhandled turned into a problem+json 500 that says nothing internal (the
    traceback goes to the log), or a 503 when it means the database is not answering.

    It sits inside CORS and the request-id layer, so even a 500 carries their headers. One layer, not two: every
    layer costs each request a coroutine and a wrapped `send`."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if header_bytes(scope["headers"]) > MAX_HEADER_BYTES:
            await headers_too_large()(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
            if declared is not None:
                if not declared.isdigit() or int(declared) > self.limit:
                    await self._too_large(scope, receive, send)
                    return
            else:
                # No length declared (chunked): read up to the limit now, so 413 is decided before auth runs.
                body = await self._read_up_to_limit(receive)
                if body is None:
                    await self._too_large(scope, receive, send)
                    return
                receive = _replay(body, receive)
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

    async def _read_up_to_limit(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"The request body is larger than {self.limit} bytes.")
        error.headers["Connection"] = "close"
        await problem_response(error)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the body already read, then whatever comes next (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
