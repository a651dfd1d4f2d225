"""Bearer tokens: HS256 ones this API issues (or a frontend mints with the shared secret), and Better Auth's."""

from __future__ import annotations

import base64
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import orjson

from todo_api.bounds import MAX_TOKEN_BYTES
from todo_api.config import Settings
from todo_api.errors import Unauthorized

LEEWAY_SECONDS = 60
HS256 = "HS256"
# What Better Auth's JWT plugin can sign with (and their siblings); everything else, "none" included, is refused.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for. `sub` is the owner id of their tasks."""

    sub: str
    claims: dict[str, Any]


class AsymmetricVerifier(Protocol):
    """Verifies tokens signed by a key from a JWKS (Better Auth's JWT plugin)."""

    async def verify(self, token: str, header: dict[str, Any]) -> dict[str, Any]: ...


def describe(error: jwt.PyJWTError) -> str:
    """A short, safe `error_description` for RFC 6750's WWW-Authenticate."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(error, jwt.InvalidSignatureError):
        return "signature verification failed"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"token has no {error.claim} claim"
    if isinstance(error, jwt.InvalidIssuerError):
        return "token issuer not accepted"
    if isinstance(error, jwt.InvalidAudienceError):
        return "token audience not accepted"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "token algorithm not accepted"
    return "malformed token"


def decode(
    token: str, key: str | jwt.PyJWK, algorithm: str, *, issuer: str | None, audience: str | None
) -> dict[str, Any]:
    """Verify signature and claims with the one algorithm `key` allows; every failure is a 401."""
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=issuer,
            audience=audience,
            leeway=LEEWAY_SECONDS,
            options={"require": ["sub", "exp"], "verify_aud": audience is not None},
        )
    except jwt.PyJWTError as error:
        raise Unauthorized(describe(error)) from None
    except (RecursionError, ValueError, TypeError):
        raise Unauthorized("malformed token") from None  # a parser's own failure on a hostile token


# What a verified token is kept for: authorisation (`sub`), `GET /api/auth/me` (`name`, `email`) and the clock.
KEPT_CLAIMS = ("sub", "name", "email", "exp", "nbf", "iat")


MAX_SUBJECT = 255  # what an owner id column holds


def checked_subject(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("token sub must be a non-empty string")
    if len(sub) > MAX_SUBJECT or "\x00" in sub or not _encodable(sub):
        raise Unauthorized("token sub is not a usable user id")
    return Principal(sub=sub, claims={name: claims[name] for name in KEPT_CLAIMS if name in claims})


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header alone (its first segment), to pick the key: the whole token is parsed once, by `decode`."""
    encoded, dot, _ = token.partition(".")
    try:
        if not dot:
            raise ValueError("not a JWS")
        header = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, RecursionError, orjson.JSONDecodeError):
        raise Unauthorized("malformed token") from None
    if not isinstance(header, dict):
        raise Unauthorized("malformed token")
    return header


class VerifiedTokens:
    """Tokens whose signature and claims already checked out, so a client reusing its token skips the crypto.

    Keyed by a digest of the whole token (signature included), holding only the claims the API uses (and tokens
    are at most 8 KiB): a bounded few hundred bytes an entry. Only the clock is checked again on a hit."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._entries: dict[bytes, tuple[Principal, float, float]] = {}

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.blake2b(token.encode(), digest_size=20).digest()

    def get(self, token: str) -> Principal | None:
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        principal, not_before, expires = entry
        now = time.time()
        if not_before - LEEWAY_SECONDS <= now < expires + LEEWAY_SECONDS:
            return principal
        del self._entries[key]
        return None

    def put(self, token: str, principal: Principal) -> None:
        claims = principal.claims
        not_before = max(_number(claims.get("nbf")), _number(claims.get("iat")))
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]  # the oldest entry
        self._entries[self._key(token)] = (principal, not_before, _number(claims["exp"]))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else -math.inf


class TokenService:
    def __init__(self, settings: Settings, secret: str, jwks: AsymmetricVerifier | None = None) -> None:
        self._secret = secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.lifetime = settings.access_token_expire_minutes * 60
        self._jwks = jwks
        self._verified = VerifiedTokens()

    def issue(self, user_id: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + self.lifetime}
        if self._issuer:
            claims["iss"] = self._issuer
        if self._audience:
            claims["aud"] = self._audience
        return jwt.encode(claims, self._secret, algorithm=HS256)

    async def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too long")
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._verify(token)
            self._verified.put(token, principal)
        return principal

    async def _verify(self, token: str) -> Principal:
        header = unverified_header(token)
        alg = header.get("alg")
        if alg == HS256:
            return checked_subject(self._decode_hs256(token))
        if self._jwks is not None and alg in ASYMMETRIC_ALGORITHMS:
            return checked_subject(await self._jwks.verify(token, header))
        raise Unauthorized("token algorithm not accepted")

    def _decode_hs256(self, token: str) -> dict[str, Any]:
        return decode(token, self._secret, HS256, issuer=self._issuer, audience=self._audience)
