"""The bearer-token attack matrix: everything here must end in 401 with a Bearer challenge (RFC 6750, RFC 8725)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import SECRET, Account, AppClient, assert_problem, sign_up


def hs256(claims: dict[str, Any], secret: str = SECRET, **header: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=header or None)


def valid_claims(sub: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 600, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})


def assert_rejected(response: httpx.Response, description: str | None = None) -> None:
    assert_problem(response, 401, "unauthorized")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert 'error="invalid_token"' in challenge
    if description:
        assert description in challenge


async def test_a_token_made_by_a_frontend_with_the_shared_secret_works(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await me(client, hs256(valid_claims(alice.id)))
    assert response.status_code == 200
    assert response.json()["id"] == alice.id


async def test_an_unknown_subject_is_described_from_the_token_claims(client: httpx.AsyncClient) -> None:
    token = hs256(valid_claims("frontend-user-1", email="f@example.com", name="Frank"))
    response = await me(client, token)
    assert response.json() == {"id": "frontend-user-1", "username": "Frank", "email": "f@example.com"}
    bare = await me(client, hs256(valid_claims("frontend-user-2")))
    assert bare.json() == {"id": "frontend-user-2", "username": None, "email": None}


async def test_no_token_gets_a_bare_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/auth/me")
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "bearer"])
async def test_other_schemes_and_empty_tokens_are_401(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/api/auth/me", headers={"Authorization": header})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def _rsa_token(claims: dict[str, Any], **header: Any) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers=header or None)


ATTACKS: dict[str, Any] = {
    "garbage": lambda sub: "not.a.jwt",
    "random bytes": lambda sub: "eyJhbGciOiJIUzI1NiJ9.%%%.***",
    "alg none": lambda sub: unsigned(valid_claims(sub)),
    "alg None": lambda sub: unsigned(valid_claims(sub), alg="None"),
    "wrong secret": lambda sub: hs256(valid_claims(sub), secret="another-secret-that-is-long-enough-xx"),
    "HS384 with the right secret": lambda sub: jwt.encode(valid_claims(sub), SECRET, algorithm="HS384"),
    "HS512 with the right secret": lambda sub: jwt.encode(valid_claims(sub), SECRET, algorithm="HS512"),
    "expired beyond the leeway": lambda sub: hs256({**valid_claims(sub), "exp": int(time.time()) - 120}),
    "nbf in the future": lambda sub: hs256({**valid_claims(sub), "nbf": int(time.time()) + 300}),
    "iat in the future": lambda sub: hs256({**valid_claims(sub), "iat": int(time.time()) + 300}),
    "missing sub": lambda sub: hs256({"iat": int(time.time()), "exp": int(time.time()) + 600}),
    "missing exp": lambda sub: hs256({"sub": sub, "iat": int(time.time())}),
    "non-string sub": lambda sub: hs256({**valid_claims(sub), "sub": 12345}),
    "empty sub": lambda sub: hs256({**valid_claims(sub), "sub": ""}),
    "non-numeric exp": lambda sub: hs256({**valid_claims(sub), "exp": "tomorrow"}),
    "unknown crit header": lambda sub: jwt.encode(
        valid_claims(sub), SECRET, algorithm="HS256", headers={"crit": ["x-custom"], "x-custom": 1}
    ),
    "RS256 from a foreign key with jku": lambda sub: _rsa_token(
        valid_claims(sub), jku="http://127.0.0.1:9/jwks.json", kid="attacker"
    ),
    "RS256 from a foreign key with x5u": lambda sub: _rsa_token(valid_claims(sub), x5u="http://127.0.0.1:9/cert"),
    "ES256 from a foreign key": lambda sub: jwt.encode(
        valid_claims(sub), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"
    ),
    "EdDSA from a foreign key": lambda sub: jwt.encode(
        valid_claims(sub), ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA"
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_attack_tokens_are_rejected(client: httpx.AsyncClient, alice: Account, attack: str) -> None:
    token = ATTACKS[attack](alice.id)
    assert_rejected(await me(client, token))
    assert_rejected(await client.get(alice.tasks, headers={"Authorization": f"Bearer {token}"}))


async def test_a_tampered_payload_is_rejected(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    header, _, signature = alice.token.split(".")
    forged_payload = b64(json.dumps(valid_claims(bob.id)).encode())
    assert_rejected(await me(client, f"{header}.{forged_payload}.{signature}"), "signature")


async def test_an_expired_token_says_so(client: httpx.AsyncClient, alice: Account) -> None:
    token = hs256({**valid_claims(alice.id), "exp": int(time.time()) - 120})
    assert_rejected(await me(client, token), 'error_description="token expired"')


async def test_clock_skew_of_up_to_a_minute_is_tolerated(client: httpx.AsyncClient, alice: Account) -> None:
    now = int(time.time())
    just_expired = hs256({"sub": alice.id, "iat": now - 600, "exp": now - 30})
    early = hs256({"sub": alice.id, "iat": now + 30, "nbf": now + 30, "exp": now + 600})
    assert (await me(client, just_expired)).status_code == 200
    assert (await me(client, early)).status_code == 200


async def test_issued_tokens_carry_sub_iat_exp(client: httpx.AsyncClient, alice: Account) -> None:
    claims = jwt.decode(alice.token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == alice.id
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(alice.token)["alg"] == "HS256"


async def test_issuer_and_audience_are_issued_and_enforced_when_configured(app_client: AppClient) -> None:
    client = await app_client(jwt_issuer="https://api.example.com", jwt_audience="todo-web")
    account = await sign_up(client)
    claims = jwt.decode(account.token, SECRET, algorithms=["HS256"], audience="todo-web")
    assert claims["iss"] == "https://api.example.com"
    assert (await me(client, account.token)).status_code == 200

    base = valid_claims(account.id)
    assert_rejected(await me(client, hs256(base)))  # neither
    assert_rejected(await me(client, hs256({**base, "iss": "https://evil.example", "aud": "todo-web"})), "issuer")
    assert_rejected(await me(client, hs256({**base, "iss": "https://api.example.com", "aud": "other"})), "audience")
    good = hs256({**base, "iss": "https://api.example.com", "aud": "todo-web"})
    assert (await me(client, good)).status_code == 200


async def test_a_cached_token_still_expires_on_time(client: httpx.AsyncClient, alice: Account) -> None:
    now = int(time.time())
    token = hs256({"sub": alice.id, "iat": now - 600, "exp": now - 59})  # inside the 60 s leeway, for a moment
    assert (await me(client, token)).status_code == 200  # verified, and now cached
    await asyncio.sleep(2.1)
    assert_rejected(await me(client, token), "token expired")


async def test_a_cached_token_is_only_reused_for_the_identical_string(
    client: httpx.AsyncClient, alice: Account
) -> None:
    assert (await me(client, alice.token)).status_code == 200
    header, payload, signature = alice.token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert_rejected(await me(client, f"{header}.{payload}.{flipped}"))
