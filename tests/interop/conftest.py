"""Real Better Auth servers (Node, tests/interop/server.mjs) and a plain JWKS server, for the interop tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import SECRET

INTEROP = Path(__file__).parent


def _require_node() -> None:
    if shutil.which("node") and (INTEROP / "node_modules" / "better-auth").is_dir():
        return
    reason = "Node.js and `npm ci` in tests/interop (run by `make test`) are needed for the Better Auth tests"
    if os.environ.get("TEST_REQUIRE_SERVICES"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def better_auth_server(alg: str | None = None, exp_offset: int | None = None) -> Iterator[str]:
    """Start `node server.mjs` on a free port; yields its base URL (also its tokens' iss and aud)."""
    _require_node()
    env = {**os.environ, "PORT": "0", "BETTER_AUTH_SECRET": "better-auth-own-secret-" + uuid.uuid4().hex}
    if alg:
        env["JWT_ALG"] = alg
    if exp_offset is not None:
        env["JWT_EXP_OFFSET"] = str(exp_offset)
    process = subprocess.Popen(["node", "server.mjs"], cwd=INTEROP, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("READY "), f"Better Auth did not start: {line!r}"
        yield line.removeprefix("READY ")
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class BetterAuthUser:
    id: str
    email: str
    name: str
    token: str


async def better_auth_user(base: str) -> BetterAuthUser:
    """Sign up on Better Auth and get a JWT-plugin token, the way a Next.js frontend does."""
    email = f"ba-{uuid.uuid4().hex[:10]}@example.com"
    async with httpx.AsyncClient(base_url=base) as browser:
        signed_up = await browser.post(
            "/api/auth/sign-up/email", json={"email": email, "password": "correct-horse-1", "name": "Ada Lovelace"}
        )
        assert signed_up.status_code == 200, signed_up.text
        token = await browser.get("/api/auth/token")
        assert token.status_code == 200, token.text
        return BetterAuthUser(signed_up.json()["user"]["id"], email, "Ada Lovelace", token.json()["token"])


@pytest.fixture(scope="module")
def better_auth() -> Iterator[str]:
    with better_auth_server() as base:
        yield base


class JwksServer:
    """A plain HTTP server publishing a JWKS we control, counting how often it is asked, and able to go down."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.down = False
        self.url = ""

    async def jwks(self, _: Request) -> Response:
        self.requests += 1
        if self.down:
            return Response(status_code=503)
        return JSONResponse(self.document)


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server_state = JwksServer()
    app = Starlette(routes=[Route("/jwks", server_state.jwks)])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    server_state.url = f"http://127.0.0.1:{port}/jwks"
    yield server_state
    server.should_exit = True
    await task


__all__ = ["SECRET", "BetterAuthUser", "JwksServer", "better_auth_server", "better_auth_user"]
