"""Who is asking, and may they touch this path: the dependencies every protected route starts with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from todo_api.auth.tokens import Principal
from todo_api.context import ContextDep
from todo_api.errors import Forbidden, Unauthorized

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A token from signup or login, or one from Better Auth. In Swagger UI, paste it under Authorize.",
)


async def current_principal(
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("A bearer token is required.", token_sent=False)
    return await context.tokens.verify(credentials.credentials)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def path_owner(
    principal: CurrentPrincipal,
    user_id: Annotated[str, Path(description="The owner's id: the token's `sub`, as `GET /api/auth/me` gives it.")],
) -> str:
    """The `{user_id}` of the path, once it is proven to be the caller's own."""
    if user_id != principal.sub:
        raise Forbidden("This path belongs to another user.")
    return user_id


OwnerId = Annotated[str, Depends(path_owner)]
