"""What the app builds once at start and every request shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from todo_api.auth.jwks import JwksVerifier
from todo_api.auth.service import Accounts
from todo_api.auth.tokens import TokenService
from todo_api.config import Settings
from todo_api.db import Database
from todo_api.events import Outbox
from todo_api.tasks.cursors import Cursors


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    database: Database
    tokens: TokenService
    accounts: Accounts
    cursors: Cursors
    events: Outbox | None = None  # records every change, when events are on
    jwks: JwksVerifier | None = None


def app_context(request: Request) -> AppContext:
    """What the app built at start (`create_app` puts it on `app.state`)."""
    context: AppContext = request.app.state.context
    return context


async def get_context(request: Request) -> AppContext:  # async: FastAPI would run a sync dependency in a thread
    return app_context(request)


ContextDep = Annotated[AppContext, Depends(get_context)]
