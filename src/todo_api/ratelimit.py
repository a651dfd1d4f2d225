"""Throttles for signup and failed logins, in memory or shared through Redis (the `limits` library).

A slot is taken before the work it guards (so concurrent attempts cannot all slip past a limit that only counts
what has finished), and given back when the attempt turns out not to count (a login with the right password).
The sliding-window counter is the strategy that can give one back: `hit` with a negative cost."""

from __future__ import annotations

import logging
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from todo_api.config import Settings
from todo_api.errors import RateLimited, Unavailable
from todo_api.observability.metrics import RATE_LIMIT_REJECTIONS

log = logging.getLogger(__name__)


def _storage_uri(redis_url: str | None) -> str:
    if not redis_url:
        return "async+memory://"
    scheme, sep, rest = redis_url.partition("://")
    return f"async+{scheme}{sep}{rest}"


class Throttle:
    """One named limit (e.g. failed logins per identifier and client); `None` limit means off."""

    def __init__(self, name: str, limit: str, limiter: SlidingWindowCounterRateLimiter) -> None:
        self.name = name
        self.item: RateLimitItem | None = None if limit == "0" else parse(limit)
        self._limiter = limiter

    async def take(self, *key: str) -> None:
        """Take one slot of `key`'s budget, atomically, or refuse with 429 (taking nothing) when none is left."""
        if self.item is None:
            return
        try:
            if await self._limiter.hit(self.item, self.name, *key):
                return
            stats = await self._limiter.get_window_stats(self.item, self.name, *key)
        except Exception as error:
            raise _unavailable(error) from None
        log.info("rate limit %s refused an attempt", self.name)
        RATE_LIMIT_REJECTIONS.labels(self.name.replace("-", "_")).inc()
        raise RateLimited("Too many attempts; try again later.", retry_after=stats.reset_time - time.time())

    async def give_back(self, *key: str) -> None:
        """Return a slot `take` took, for an attempt that does not count (at a window's edge the slot comes back to
        the new window, which then allows one attempt more: never fewer than the limit)."""
        if self.item is None:
            return
        try:
            await self._limiter.hit(self.item, self.name, *key, cost=-1)
        except Exception as error:
            raise _unavailable(error) from None


def _unavailable(error: Exception) -> Unavailable:
    log.error("rate-limit storage failed: %s", type(error).__name__)
    return Unavailable("The rate limiter's storage is not answering.")


class Throttles:
    def __init__(self, settings: Settings) -> None:
        storage = storage_from_string(_storage_uri(settings.redis_url))
        assert isinstance(storage, Storage)
        self.storage = storage
        limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.login = Throttle("login", settings.login_rate_limit, limiter)
        self.login_ip = Throttle("login-ip", settings.login_ip_rate_limit, limiter)
        self.signup = Throttle("signup", settings.signup_rate_limit, limiter)
