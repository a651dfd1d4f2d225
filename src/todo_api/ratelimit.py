"""Throttles for signup and failed logins, in memory or shared through Redis (the `limits` library)."""

from __future__ import annotations

import logging
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from todo_api.config import Settings
from todo_api.errors import RateLimited, Unavailable

log = logging.getLogger(__name__)


def _storage_uri(redis_url: str | None) -> str:
    if not redis_url:
        return "async+memory://"
    scheme, sep, rest = redis_url.partition("://")
    return f"async+{scheme}{sep}{rest}"


class Throttle:
    """One named limit (e.g. failed logins per identifier and client); `None` limit means off."""

    def __init__(self, name: str, limit: str, limiter: MovingWindowRateLimiter) -> None:
        self.name = name
        self.item: RateLimitItem | None = None if limit == "0" else parse(limit)
        self._limiter = limiter

    async def check(self, *key: str) -> None:
        """Refuse with 429 when the budget for `key` is spent; spends nothing."""
        if self.item is None:
            return
        try:
            allowed = await self._limiter.test(self.item, self.name, *key)
            if not allowed:
                stats = await self._limiter.get_window_stats(self.item, self.name, *key)
        except Exception as error:
            raise _unavailable(error) from None
        if not allowed:
            raise RateLimited("Too many attempts; try again later.", retry_after=stats.reset_time - time.time())

    async def spend(self, *key: str) -> bool:
        """Count one attempt against `key`; False when that went over the budget."""
        if self.item is None:
            return True
        try:
            return await self._limiter.hit(self.item, self.name, *key)
        except Exception as error:
            raise _unavailable(error) from None

    async def take(self, *key: str) -> None:
        """Count one attempt and refuse with 429 if that went over the budget."""
        if not await self.spend(*key):
            await self.check(*key)


def _unavailable(error: Exception) -> Unavailable:
    log.error("rate-limit storage failed: %s", type(error).__name__)
    return Unavailable("The rate limiter's storage is not answering.")


class Throttles:
    def __init__(self, settings: Settings) -> None:
        storage = storage_from_string(_storage_uri(settings.redis_url))
        assert isinstance(storage, Storage)
        self.storage = storage
        limiter = MovingWindowRateLimiter(self.storage)
        self.login = Throttle("login", settings.login_rate_limit, limiter)
        self.login_ip = Throttle("login-ip", settings.login_ip_rate_limit, limiter)
        self.signup = Throttle("signup", settings.signup_rate_limit, limiter)
