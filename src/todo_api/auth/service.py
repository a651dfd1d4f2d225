"""Accounts: signup and login. Raises domain errors; knows nothing of HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from todo_api import events
from todo_api.auth.models import users
from todo_api.auth.passwords import PasswordHasher
from todo_api.auth.schemas import LoginIn, SignupIn, normalized_email
from todo_api.db import utcnow
from todo_api.errors import Conflict, Unauthorized
from todo_api.ratelimit import Throttles


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    username: str
    email: str
    created_at: datetime


PUBLIC_COLUMNS = (users.c.id, users.c.username, users.c.email, users.c.created_at)


async def find_account(connection: AsyncConnection, user_id: str) -> Account | None:
    row = (await connection.execute(select(*PUBLIC_COLUMNS).where(users.c.id == user_id))).first()
    return Account(*row) if row else None


@dataclass(frozen=True)
class Accounts:
    hasher: PasswordHasher
    throttles: Throttles

    async def signup(self, connection: AsyncConnection, data: SignupIn) -> Account:
        await self._ensure_free(connection, data)
        account = Account(str(uuid.uuid4()), data.username, data.email, utcnow())
        password_hash = await self.hasher.hash(data.password)
        try:
            await connection.execute(
                insert(users).values(
                    id=account.id,
                    username=account.username,
                    email=account.email,
                    password_hash=password_hash,
                    created_at=account.created_at,
                )
            )
        except IntegrityError as error:
            # Lost a race with a concurrent signup: the unique index named in the error says which field.
            field = "username" if "username" in str(error.orig) else "email"
            raise Conflict(["body", field], f"This {field} is already taken.") from None
        await events.user_signed_up(connection, account)
        return account

    async def _ensure_free(self, connection: AsyncConnection, data: SignupIn) -> None:
        username_taken = func.lower(users.c.username) == data.username.lower()
        email_taken = users.c.email == data.email
        taken = await connection.execute(select(username_taken, email_taken).where(username_taken | email_taken))
        for same_username, _ in taken:
            field = "username" if same_username else "email"
            raise Conflict(["body", field], f"This {field} is already taken.")

    async def login(self, connection: AsyncConnection, data: LoginIn, client: str) -> Account:
        """The account these credentials open; 429 before any bcrypt work once failures pile up."""
        identifier = data.identifier
        await self.throttles.login_ip.check(client)
        await self.throttles.login.check(client, identifier)
        match: ColumnElement[bool]
        if data.email is not None or "@" in identifier:
            match = users.c.email == normalized_email(identifier)
        else:
            match = func.lower(users.c.username) == identifier
        row = (await connection.execute(select(*PUBLIC_COLUMNS, users.c.password_hash).where(match))).first()
        if await self.hasher.verify(data.password, row.password_hash if row else None):
            assert row is not None
            return Account(row.id, row.username, row.email, row.created_at)
        await self.throttles.login_ip.spend(client)
        await self.throttles.login.spend(client, identifier)
        raise Unauthorized("Invalid username, email or password.", token_sent=False)
