"""todo-api against a real Better Auth server (JWT plugin, JWKS) and real `jose`-minted HS256 tokens."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

from tests.conftest import SECRET, AppClient, assert_problem
from tests.interop.conftest import INTEROP, JwksServer, better_auth_server, better_auth_user


def hmac_token(claims: dict[str, Any], secret: bytes, **header: str) -> str:
    """HS256 signed by hand: PyJWT itself refuses a public key as an HMAC secret, an attacker does not."""
    encode = jwt.utils.base64url_encode
    signing_input = b".".join(
        [encode(json.dumps({"alg": "HS256", **header}).encode()), encode(json.dumps(claims).encode())]
    )
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + encode(signature)).decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_better_auth_user_this_api_never_saw_works_at_once(app_client: AppClient, better_auth: str) -> None:
    client = await app_client(better_auth_url=better_auth)
    user = await better_auth_user(better_auth)
    assert jwt.get_unverified_header(user.token)["alg"] == "EdDSA"
    auth = bearer(user.token)

    me = await client.get("/api/auth/me", headers=auth)
    assert me.status_code == 200, me.text
    assert me.json() == {"id": user.id, "username": user.name, "email": user.email}
    await use_tasks(client, user.id, auth)


async def use_tasks(client: httpx.AsyncClient, user_id: str, auth: dict[str, str]) -> None:
    """Create, list, complete and delete a task as this user, the way a frontend would."""
    created = await client.post(f"/api/{user_id}/tasks", json={"title": "from Next.js"}, headers=auth)
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["user_id"] == user_id
    listed = await client.get(f"/api/{user_id}/tasks", headers=auth)
    assert [item["id"] for item in listed.json()["items"]] == [task["id"]]
    completed = await client.patch(f"/api/{user_id}/tasks/{task['id']}/complete", headers=auth)
    assert completed.json()["completed"] is True
    deleted = await client.delete(f"/api/{user_id}/tasks/{task['id']}", headers=auth)
    assert deleted.status_code == 200
    assert (await client.get(f"/api/{user_id}/tasks", headers=auth)).json()["total"] == 0


async def test_an_expired_better_auth_token_is_401(app_client: AppClient) -> None:
    with better_auth_server(exp_offset=-120) as base:  # every token it signs expired two minutes ago
        client = await app_client(better_auth_url=base)
        user = await better_auth_user(base)
        response = await client.get("/api/auth/me", headers=bearer(user.token))
        assert_401(response)
        assert "token expired" in response.headers["www-authenticate"]


async def test_better_auth_users_are_isolated_from_each_other(app_client: AppClient, better_auth: str) -> None:
    client = await app_client(better_auth_url=better_auth)
    ada, bob = await better_auth_user(better_auth), await better_auth_user(better_auth)
    task = (await client.post(f"/api/{ada.id}/tasks", json={"title": "ada's"}, headers=bearer(ada.token))).json()
    assert_problem(await client.get(f"/api/{ada.id}/tasks", headers=bearer(bob.token)), 403, "forbidden")
    foreign = await client.get(f"/api/{bob.id}/tasks/{task['id']}", headers=bearer(bob.token))
    assert_problem(foreign, 404, "not-found")


@pytest.mark.parametrize("alg", ["ES256", "ES512", "RS256", "PS256"])
async def test_every_algorithm_better_auth_can_sign_with_is_accepted(app_client: AppClient, alg: str) -> None:
    with better_auth_server(alg) as base:
        client = await app_client(better_auth_url=base)
        user = await better_auth_user(base)
        assert jwt.get_unverified_header(user.token)["alg"] == alg
        response = await client.get("/api/auth/me", headers=bearer(user.token))
        assert response.status_code == 200, response.text
        assert response.json()["id"] == user.id
        await use_tasks(client, user.id, bearer(user.token))


async def test_issuer_and_audience_must_match_better_auths(app_client: AppClient, better_auth: str) -> None:
    user = await better_auth_user(better_auth)
    wrong_issuer = await app_client(better_auth_url=better_auth, better_auth_issuer="https://other.example")
    assert_401(await wrong_issuer.get("/api/auth/me", headers=bearer(user.token)))
    wrong_audience = await app_client(better_auth_url=better_auth, better_auth_audience="https://other.example")
    assert_401(await wrong_audience.get("/api/auth/me", headers=bearer(user.token)))
    jwks_only = await app_client(better_auth_jwks_url=f"{better_auth}/api/auth/jwks")
    assert (await jwks_only.get("/api/auth/me", headers=bearer(user.token))).status_code == 200


async def test_forged_and_tampered_better_auth_tokens_are_401(app_client: AppClient, better_auth: str) -> None:
    client = await app_client(better_auth_url=better_auth)
    user = await better_auth_user(better_auth)
    header, payload, signature = user.token.split(".")
    claims = jwt.decode(user.token, options={"verify_signature": False})

    # An HS256 token whose "secret" is Better Auth's public key (the algorithm-confusion attack).
    public_jwk = (await httpx.AsyncClient().get(f"{better_auth}/api/auth/jwks")).json()["keys"][0]
    public_pem = OKPAlgorithm.from_jwk(json.dumps(public_jwk)).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = [
        hmac_token(claims, secret, kid=public_jwk["kid"])
        for secret in (public_pem, json.dumps(public_jwk).encode(), public_jwk["x"].encode())
    ]
    # Signed by another Ed25519 key under Better Auth's kid.
    impostor = jwt.encode(
        claims, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": public_jwk["kid"]}
    )
    # The right kid, but an algorithm other than the key's.
    wrong_alg = ".".join(
        [
            jwt.utils.base64url_encode(json.dumps({"alg": "ES256", "kid": public_jwk["kid"]}).encode()).decode(),
            payload,
            signature,
        ]
    )
    tampered = ".".join(
        [header, jwt.utils.base64url_encode(json.dumps({**claims, "sub": "someone-else"}).encode()).decode(), signature]
    )
    unknown_kid = jwt.encode(claims, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "nope"})
    for token in (*confused, impostor, wrong_alg, tampered, unknown_kid):
        assert_401(await client.get("/api/auth/me", headers=bearer(token)))


async def test_a_frontend_minted_jose_hs256_token_is_accepted(app_client: AppClient) -> None:
    client = await app_client(jwt_issuer="https://web.example", jwt_audience="todo-api")
    from tests.interop.conftest import _require_node

    _require_node()
    env = {**os.environ, "BETTER_AUTH_SECRET": SECRET, "JWT_ISSUER": "https://web.example", "JWT_AUDIENCE": "todo-api"}
    minted = subprocess.run(
        ["node", "mint-hs256.mjs", json.dumps({"sub": "frontend-user-7", "email": "f7@example.com"})],
        cwd=INTEROP,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    response = await client.get("/api/auth/me", headers=bearer(minted))
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "frontend-user-7", "username": None, "email": "f7@example.com"}
    await use_tasks(client, "frontend-user-7", bearer(minted))


async def test_rotated_keys_are_picked_up_at_most_every_10_seconds(app_client: AppClient) -> None:
    with better_auth_server() as base:
        client = await app_client(better_auth_url=base)  # fetches the JWKS at start
        before = await better_auth_user(base)
        rotated = (await httpx.AsyncClient().post(f"{base}/test/rotate-keys")).json()
        after = await better_auth_user(base)
        assert jwt.get_unverified_header(after.token)["kid"] == rotated["kid"]

        assert (await client.get("/api/auth/me", headers=bearer(before.token))).status_code == 200
        # The new kid arrived within 10 s of the last fetch: no refetch yet, so it is still unknown.
        assert_401(await client.get("/api/auth/me", headers=bearer(after.token)))
        await asyncio.sleep(10.5)
        assert (await client.get("/api/auth/me", headers=bearer(after.token))).status_code == 200
        assert (await client.get("/api/auth/me", headers=bearer(before.token))).status_code == 200  # old key kept


def ed25519_key(kid: str) -> tuple[ed25519.Ed25519PrivateKey, dict[str, Any]]:
    private = ed25519.Ed25519PrivateKey.generate()
    public = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "alg": "EdDSA"}


def ba_token(private: ed25519.Ed25519PrivateKey, kid: str, sub: str = "BaUser0123456789abcdefABCDEF0123") -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 900}, private, algorithm="EdDSA", headers={"kid": kid})


async def test_unknown_kids_cause_at_most_one_fetch_per_10_seconds(
    app_client: AppClient, jwks_server: JwksServer
) -> None:
    private, public = ed25519_key("k1")
    jwks_server.document = {"keys": [public]}
    client = await app_client(better_auth_jwks_url=jwks_server.url)
    assert jwks_server.requests == 1  # at start
    assert (await client.get("/api/auth/me", headers=bearer(ba_token(private, "k1")))).status_code == 200
    responses = await asyncio.gather(
        *(client.get("/api/auth/me", headers=bearer(ba_token(private, f"unknown-{i}"))) for i in range(50))
    )
    assert {response.status_code for response in responses} == {401}
    assert jwks_server.requests == 1


async def test_cached_keys_keep_working_while_the_jwks_is_down(app_client: AppClient, jwks_server: JwksServer) -> None:
    private, public = ed25519_key("k1")
    jwks_server.document = {"keys": [public]}
    client = await app_client(better_auth_jwks_url=jwks_server.url)
    jwks_server.down = True
    response = await client.get("/api/auth/me", headers=bearer(ba_token(private, "k1")))
    assert response.status_code == 200


async def test_no_usable_key_at_all_is_503_with_retry_after_and_hs256_is_unaffected(
    app_client: AppClient, jwks_server: JwksServer
) -> None:
    private, _ = ed25519_key("k1")
    jwks_server.down = True
    client = await app_client(better_auth_jwks_url=jwks_server.url)
    response = await client.get("/api/auth/me", headers=bearer(ba_token(private, "k1")))
    assert_problem(response, 503, "unavailable")
    assert int(response.headers["retry-after"]) >= 1
    now = int(time.time())
    hs = jwt.encode({"sub": "local-user", "iat": now, "exp": now + 60}, SECRET, algorithm="HS256")
    assert (await client.get("/api/auth/me", headers=bearer(hs))).status_code == 200


async def test_symmetric_keys_in_a_jwks_are_never_used(app_client: AppClient, jwks_server: JwksServer) -> None:
    jwks_server.document = {"keys": [{"kty": "oct", "kid": "sym", "k": "c2VjcmV0", "alg": "HS256"}]}
    client = await app_client(better_auth_jwks_url=jwks_server.url)
    now = int(time.time())
    token = jwt.encode({"sub": "x", "iat": now, "exp": now + 60}, "secret", algorithm="HS256", headers={"kid": "sym"})
    assert_401(await client.get("/api/auth/me", headers=bearer(token)))
