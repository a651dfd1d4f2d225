"""Accounts: signup and login. Raises domain errors; knows nothing of HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from todo_api.auth.models import User
from todo_api.auth.passwords import PasswordHasher
from todo_api.auth.schemas import LoginIn, SignupIn, normalized_email
from todo_api.db import utcnow
from todo_api.errors import Conflict, Unauthorized
from todo_api.ratelimit import Throttles


@dataclass(frozen=True)
class Accounts:
    hasher: PasswordHasher
    throttles: Throttles

    async def signup(self, session: AsyncSession, data: SignupIn) -> User:
        await self._ensure_free(session, data)
        user = User(
            id=str(uuid.uuid4()),
            username=data.username,
            email=data.email,
            password_hash=await self.hasher.hash(data.password),
            created_at=utcnow(),
        )
        session.add(user)
        try:
            await session.flush()
        except IntegrityError as error:
            # Lost a race with a concurrent signup: the unique index named in the error says which field.
            field = "username" if "username" in str(error.orig) else "email"
            raise Conflict(["body", field], f"This {field} is already taken.") from None
        return user

    async def _ensure_free(self, session: AsyncSession, data: SignupIn) -> None:
        username_taken = func.lower(col(User.username)) == data.username.lower()
        email_taken = col(User.email) == data.email
        taken = await session.execute(select(username_taken, email_taken).where(username_taken | email_taken))
        for same_username, _ in taken:
            field = "username" if same_username else "email"
            raise Conflict(["body", field], f"This {field} is already taken.")

    async def login(self, session: AsyncSession, data: LoginIn, client: str) -> User:
        """The account these credentials open; 429 before any bcrypt work once failures pile up."""
        identifier = data.identifier
        await self.throttles.login_ip.check(client)
        await self.throttles.login.check(client, identifier)
        query = select(User)
        if data.email is not None or "@" in identifier:
            query = query.where(col(User.email) == normalized_email(identifier))
        else:
            query = query.where(func.lower(col(User.username)) == identifier)
        user = (await session.execute(query)).scalar_one_or_none()
        if await self.hasher.verify(data.password, user.password_hash if user else None):
            assert user is not None
            return user
        await self.throttles.login_ip.spend(client)
        await self.throttles.login.spend(client, identifier)
        raise Unauthorized("Invalid username, email or password.", token_sent=False)
