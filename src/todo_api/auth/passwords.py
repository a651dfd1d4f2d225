"""bcrypt, always off the event loop, on a pool small enough that the loop keeps a core."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, partial
from typing import ParamSpec, TypeVar

import bcrypt

BCRYPT_MAX_BYTES = 72

P = ParamSpec("P")
T = TypeVar("T")


class PasswordHasher:
    def __init__(self, rounds: int, threads: int | None = None) -> None:
        self.rounds = rounds
        self._pool = ThreadPoolExecutor(
            max_workers=threads or max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="bcrypt"
        )

    async def hash(self, password: str) -> str:
        digest = await self._run(bcrypt.hashpw, password.encode(), bcrypt.gensalt(self.rounds))
        return digest.decode()

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Check a password; with no hash (unknown account) check against a dummy, so timing reveals nothing."""
        candidate = password_hash.encode() if password_hash else self._dummy_hash
        matches = await self._run(bcrypt.checkpw, password.encode(), candidate)
        return matches and password_hash is not None

    @cached_property
    def _dummy_hash(self) -> bytes:
        return bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(self.rounds))

    async def warm_up(self) -> None:
        await self._run(lambda: self._dummy_hash)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
