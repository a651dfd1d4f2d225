"""Who is asking, and may they touch this path: what every protected route starts with.

The bearer token is read straight from the header, and task routes call `path_owner` themselves rather than
through FastAPI's dependency injection, whose per-request cost was a large part of a task request's; the OpenAPI
document still declares the bearer scheme for each operation (see docs.BEARER_SCHEME)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from todo_api.auth.tokens import Principal
from todo_api.errors import Forbidden, Unauthorized


async def current_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("A bearer token is required.", token_sent=False)
    principal: Principal = await request.app.state.context.tokens.verify(token)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def path_owner(request: Request) -> str:
    """The `{user_id}` of the path, once it is proven to be the caller's own (401 first, then 403)."""
    principal = await current_principal(request)
    user_id: str = request.path_params["user_id"]
    if user_id != principal.sub:
        raise Forbidden("This path belongs to another user.")
    return user_id
