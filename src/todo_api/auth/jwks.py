"""Better Auth's JWT-plugin tokens, verified against its JWKS: keys cached, refetched on a TTL or an unknown `kid`
(at most once every 10 seconds), and never taken from the token itself (`jku`, `x5u`, `jwk` are ignored)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import httpx
import jwt

from todo_api.auth.tokens import decode
from todo_api.errors import Unauthorized, Unavailable

log = logging.getLogger(__name__)

ASYMMETRIC_KEY_TYPES = {"OKP", "EC", "RSA"}  # never "oct": a published key must not become an HMAC secret


class JwksVerifier:
    def __init__(
        self,
        url: str,
        *,
        issuer: str | None,
        audience: str | None,
        ttl: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf  # last successful fetch (monotonic)
        self._attempted_at = -math.inf  # last fetch attempt, successful or not
        self._lock = asyncio.Lock()

    async def verify(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("token has no key id")
        key = await self._key(kid)
        if header.get("alg") != key.algorithm_name:
            raise Unauthorized("token algorithm not accepted")
        return decode(token, key, key.algorithm_name, issuer=self._issuer, audience=self._audience)

    async def _key(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        key = self._keys.get(kid)
        if key is not None and now - self._fetched_at < self._ttl:
            return key
        await self.refresh()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._fetched_at == -math.inf:
            wait = max(1, math.ceil(self._min_interval - (time.monotonic() - self._attempted_at)))
            raise Unavailable("Better Auth's signing keys cannot be fetched right now.", retry_after=wait)
        raise Unauthorized("token signed by an unknown key")

    async def refresh(self) -> None:
        """Fetch the JWKS unless a fetch was tried in the last `min_refresh_interval` seconds (single-flight)."""
        async with self._lock:
            if time.monotonic() - self._attempted_at < self._min_interval:
                return
            self._attempted_at = time.monotonic()
            try:
                response = await self._http.get(self.url, headers={"Accept": "application/json"})
                response.raise_for_status()
                keys = self._usable_keys(response.json())
            except (httpx.HTTPError, ValueError) as error:
                log.warning("JWKS fetch from %s failed (%s); keeping %d cached keys", self.url, error, len(self._keys))
                return
            self._keys = keys
            self._fetched_at = time.monotonic()

    @staticmethod
    def _usable_keys(document: Any) -> dict[str, jwt.PyJWK]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        usable: dict[str, jwt.PyJWK] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("kty") not in ASYMMETRIC_KEY_TYPES:
                continue
            if not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
                continue
            try:
                usable[entry["kid"]] = jwt.PyJWK(entry)
            except jwt.PyJWTError as error:
                log.warning("skipping JWKS key %s: %s", entry["kid"], error)
        return usable

    async def close(self) -> None:
        await self._http.aclose()
