"""Accounts: signup and login. Raises domain errors; knows nothing of HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, insert, select

from todo_api.auth.models import users
from todo_api.auth.passwords import PasswordHasher
from todo_api.auth.schemas import LoginIn, SignupIn, normalized_email
from todo_api.db import Database, Row, Session, unique_violation, utcnow
from todo_api.errors import Conflict, RateLimited, Unauthorized, Unavailable
from todo_api.events import Outbox
from todo_api.ratelimit import Throttles


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    username: str
    email: str
    created_at: datetime


PUBLIC_COLUMNS = (users.c.id, users.c.username, users.c.email, users.c.created_at)
_USERNAME_TAKEN = func.lower(users.c.username) == bindparam("username")  # the lower-cased name
_EMAIL_TAKEN = users.c.email == bindparam("email")  # emails are stored lower-cased
_BY_ID = select(*PUBLIC_COLUMNS).where(users.c.id == bindparam("user_id"))
_BY_USERNAME = select(*PUBLIC_COLUMNS, users.c.password_hash).where(_USERNAME_TAKEN)
_BY_EMAIL = select(*PUBLIC_COLUMNS, users.c.password_hash).where(_EMAIL_TAKEN)
_TAKEN = select(_USERNAME_TAKEN.label("username_taken")).where(_USERNAME_TAKEN | _EMAIL_TAKEN)
_INSERT = insert(users)


def _account(row: Row) -> Account:
    return Account(row["id"], row["username"], row["email"], row["created_at"])


async def find_account(session: Session, user_id: str) -> Account | None:
    rows = await session.fetch(_BY_ID, {"user_id": user_id})
    return _account(rows[0]) if rows else None


@dataclass(frozen=True)
class Accounts:
    hasher: PasswordHasher
    throttles: Throttles
    events: Outbox | None = None

    async def signup(self, database: Database, data: SignupIn) -> Account:
        """A new account. bcrypt runs with no connection held: a slow hash must not hold a pooled connection (or,
        on SQLite, the one write lock) while others wait for it."""
        async with database.session(write=False) as session:
            await self._ensure_free(session, data)
        account = Account(str(uuid.uuid4()), data.username, data.email, utcnow())
        password_hash = await self.hasher.hash(data.password)
        values = {
            "id": account.id,
            "username": account.username,
            "email": account.email,
            "password_hash": password_hash,
            "created_at": account.created_at,
        }
        async with database.session(write=True) as session:
            try:
                await session.fetch(_INSERT, values)
            except Exception as error:
                if (index := unique_violation(error)) is None:
                    raise
                # Lost a race with a concurrent signup: the unique index named in the error says which field.
                field = "username" if "username" in index else "email"
                raise Conflict(["body", field], f"This {field} is already taken.") from None
            if self.events is not None:
                await self.events.user_signed_up(session, account)
        return account

    async def _ensure_free(self, session: Session, data: SignupIn) -> None:
        taken = await session.fetch(_TAKEN, {"username": data.username.lower(), "email": data.email})
        if taken:
            field = "username" if taken[0]["username_taken"] else "email"
            raise Conflict(["body", field], f"This {field} is already taken.")

    async def login(self, database: Database, data: LoginIn, client: str) -> Account:
        """The account these credentials open. A slot of both login budgets is taken before any bcrypt work (429
        when either is spent), and given back when the password was right (or never checked): only failures
        count. The account is looked up first, and bcrypt runs with no connection held."""
        by_email = data.email is not None or "@" in data.identifier
        # Counted the way the account is looked up: every spelling of one address is one identifier.
        identifier = normalized_email(data.identifier) if by_email else data.identifier
        throttles = self.throttles
        await throttles.login_ip.take(client)
        try:
            await throttles.login.take(client, identifier)
        except RateLimited:
            await throttles.login_ip.give_back(client)  # refused before it was tried: not a failed login
            raise
        try:
            async with database.session(write=False) as session:
                if by_email:
                    rows = await session.fetch(_BY_EMAIL, {"email": identifier})
                else:
                    rows = await session.fetch(_BY_USERNAME, {"username": identifier})
            row = rows[0] if rows else None
            matches = await self.hasher.verify(data.password, row["password_hash"] if row else None)
        except Unavailable:  # the database or bcrypt's queue: nothing was checked, so nothing counts
            await throttles.login.give_back(client, identifier)
            await throttles.login_ip.give_back(client)
            raise
        if matches:
            assert row is not None
            await throttles.login.give_back(client, identifier)
            await throttles.login_ip.give_back(client)
            return _account(row)
        raise Unauthorized("Invalid username, email or password.", token_sent=False)
