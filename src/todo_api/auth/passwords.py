"""bcrypt, always off the event loop, on a pool small enough that the loop keeps a core, with a bounded queue.

Each hash takes a turn (a slot per thread, handed out in arrival order). A caller that would wait longer than
`max_wait` for its turn gets a 503 instead of queueing: one account logging in as fast as it can may not starve
everyone else's logins for minutes. `waiting` is how many wait now (sampled into the metrics)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, partial
from typing import ParamSpec, TypeVar

import bcrypt

from todo_api.errors import Unavailable

BCRYPT_MAX_BYTES = 72

P = ParamSpec("P")
T = TypeVar("T")


class PasswordHasher:
    def __init__(self, rounds: int, threads: int | None = None, max_wait: float = 5.0) -> None:
        self.rounds = rounds
        workers = threads or max(1, (os.cpu_count() or 2) - 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcrypt")
        self._turns = asyncio.Semaphore(workers)
        self._max_wait = max_wait
        self.waiting = 0

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
        self.waiting += 1
        try:
            async with asyncio.timeout(self._max_wait):
                await self._turns.acquire()
        except TimeoutError:
            raise Unavailable("Too many password checks are waiting; try again shortly.", retry_after=1) from None
        finally:
            self.waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))
        finally:
            self._turns.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
