"""The route classes every route uses, so what each route of a kind must check is structural, not remembered
(the pattern of Polar's `kit/routing.py`).

Each class's `admit` runs before FastAPI reads a byte of the request: `JsonRoute` (signup, login) admits anyone,
`AuthenticatedRoute` a valid bearer token (401), `OwnerRoute` only the owner of the path's `{user_id}` (403).
Then a JSON body is parsed once (400 for bad JSON, after 401 and 403, as the contract orders them), and then
FastAPI's own `Annotated` path, query, header and body parameters run, documented from that one declaration.

An `OwnerRoute` without `{user_id}` in its path cannot be built; `assert_guarded` refuses an app where an `/api/…`
operation other than signup and login has no token check."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import BaseRoute

from todo_api.auth.tokens import Principal
from todo_api.context import app_context
from todo_api.errors import Forbidden, Unauthorized, ValidationFailed

PUBLIC_OPERATIONS = frozenset({"/api/auth/signup", "/api/auth/login"})
_PRINCIPAL = "todo_api.principal"


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("A bearer token is required.", token_sent=False)
    principal = await app_context(request).tokens.verify(token)
    request.scope[_PRINCIPAL] = principal
    return principal


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_body(request: Request) -> None:
    """Parse a JSON body once, with orjson, for FastAPI to validate (`request.json()` returns it). Anything but a
    JSON object is a 400 naming `body`; an empty body is left for the route's default."""
    raw = await request.body()
    if not raw.strip():
        request._body = b""  # white space alone is no body, as an empty one is
        return
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            # orjson refuses lone surrogates (and integers past 64 bits); the stdlib parser keeps them, so the field
            # holding one can be named in the error.
            data = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise ValidationFailed.one(["body"], "Body is not valid JSON", "json_invalid") from None
    if not isinstance(data, dict):
        raise ValidationFailed.one(["body"], "Body must be a JSON object", "model_attributes_type")
    request._json = data  # Starlette's own cache of `request.json()`


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class JsonRoute(APIRoute):
    """Every route of this API: `admit` runs before a byte of the request is read, then a JSON body is parsed once
    (orjson; bad JSON is a 400 naming `body`), then FastAPI's own parameters and body validation run."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        has_body = self.body_field is not None

        async def admitted(request: Request) -> Response:
            await self.admit(request)
            if has_body:
                await read_json_body(request)
            return await handler(request)

        return admitted

    async def admit(self, request: Request) -> None:
        """What this kind of route demands of the caller (nothing: signup and login are public)."""


class AuthenticatedRoute(JsonRoute):
    """A route for any caller with a valid bearer token (401 otherwise)."""

    async def admit(self, request: Request) -> None:
        await authenticate(request)


class OwnerRoute(AuthenticatedRoute):
    """A route under `/api/{user_id}/…`: only the owner of that path may call it (`{user_id}` is the token's `sub`,
    after URL-decoding; 403 otherwise), so the handler's `user_id` parameter is the verified owner."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if "{user_id}" not in path:
            raise ValueError(f"an OwnerRoute needs {{user_id}} in its path: {path}")
        super().__init__(path, endpoint, **kwargs)

    async def admit(self, request: Request) -> None:
        principal = await authenticate(request)
        if request.path_params["user_id"] != principal.sub:
            raise Forbidden("This path belongs to another user.")


def operation_id(route: APIRoute) -> str:
    """The operationId a client generator names its method by: the endpoint's name in camelCase (`create_task` →
    `createTask`)."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _principal(request: Request) -> Principal:
    principal: Principal | None = request.scope.get(_PRINCIPAL)
    if principal is None:
        raise RuntimeError("CurrentPrincipal needs an AuthenticatedRoute")
    return principal


# The caller of an AuthenticatedRoute, as its route class verified it.
CurrentPrincipal = Annotated[Principal, Depends(_principal)]


def _routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, those of included routers too (FastAPI keeps an included router as one route)."""
    for route in routes:
        yield route
        if (included := getattr(route, "original_router", None)) is not None:
            yield from _routes(included.routes)


def assert_guarded(app: FastAPI) -> None:
    """Every `/api` operation but signup and login checks its caller: a route that forgot is a start-up error."""
    for route in _routes(app.routes):
        if not isinstance(route, APIRoute) or not route.path.startswith("/api/"):
            continue
        if route.path in PUBLIC_OPERATIONS:
            continue
        if not isinstance(route, AuthenticatedRoute):
            raise RuntimeError(f"{route.path} is neither public nor an AuthenticatedRoute")
        if "{user_id}" in route.path and not isinstance(route, OwnerRoute):
            raise RuntimeError(f"{route.path} names a user but is not an OwnerRoute")
