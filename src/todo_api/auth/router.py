"""The account routes: signup and login are public (`JsonRoute`), `GET /api/auth/me` wants a token."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status

from todo_api.auth.schemas import LoginIn, MeOut, SignupIn, TokenOut
from todo_api.auth.service import Account, find_account
from todo_api.clients import client_address
from todo_api.context import AppContext, ContextDep
from todo_api.docs import problems
from todo_api.http import JsonResponse
from todo_api.routing import AuthenticatedRoute, CurrentPrincipal, JsonRoute, operation_id

router = APIRouter(prefix="/api/auth", tags=["auth"], route_class=JsonRoute, generate_unique_id_function=operation_id)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_response(context: AppContext, user: Account, status_code: int) -> JsonResponse:
    body = {
        "access_token": context.tokens.issue(user.id),
        "token_type": "bearer",
        "expires_in": context.tokens.lifetime,
        "user": {
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "created_at": user.created_at.isoformat(timespec="microseconds"),
        },
    }
    return JsonResponse(body, status_code=status_code, headers=NO_STORE)


async def count_signup_attempt(request: Request, context: ContextDep) -> None:
    """Every signup attempt counts against SIGNUP_RATE_LIMIT, a malformed one too (dependencies run before FastAPI
    validates the body)."""
    await context.accounts.throttles.signup.take(client_address(request, context.settings.trusted_proxies))


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenOut,
    responses=problems(400, 409, 429, 503),
    dependencies=[Depends(count_signup_attempt)],
)
async def signup(context: ContextDep, body: SignupIn) -> JsonResponse:
    """Create an account and get a token for it."""
    user = await context.accounts.signup(context.database, body)
    return token_response(context, user, status.HTTP_201_CREATED)


@router.post("/login", response_model=TokenOut, responses=problems(400, 401, 429, 503))
async def login(request: Request, context: ContextDep, body: LoginIn) -> JsonResponse:
    """Exchange a username (or email) and password for a token."""
    client = client_address(request, context.settings.trusted_proxies)
    user = await context.accounts.login(context.database, body, client)
    return token_response(context, user, status.HTTP_200_OK)


async def get_me(principal: CurrentPrincipal, context: ContextDep) -> JsonResponse:
    """Who the token belongs to; its `id` is the `user_id` for task paths."""
    async with context.database.session(write=False) as session:
        user = await find_account(session, principal.sub)
    if user is not None:
        return JsonResponse({"id": user.id, "username": user.username, "email": user.email})
    # A Better Auth user (or a frontend-minted token): what the token itself says.
    claims = principal.claims
    name, email = claims.get("name"), claims.get("email")
    return JsonResponse(
        {
            "id": principal.sub,
            "username": name if isinstance(name, str) else None,
            "email": email if isinstance(email, str) else None,
        }
    )


router.add_api_route(
    "/me",
    get_me,
    methods=["GET"],
    response_model=MeOut,
    responses=problems(401, 503),
    route_class_override=AuthenticatedRoute,
)
