"""The service as an operator runs it: `todo-api migrate` and `todo-api serve`, as real processes over real sockets."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD, SECRET, signup_body, wait_for_health

TODO_API = str(Path(sys.executable).with_name("todo-api"))
QUIET_LIMITS = {"LOGIN_RATE_LIMIT": "0", "LOGIN_IP_RATE_LIMIT": "0", "SIGNUP_RATE_LIMIT": "0", "BCRYPT_ROUNDS": "4"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {key: value for key, value in os.environ.items() if not key.startswith(("BETTER_AUTH", "DATABASE_URL"))}
    return {**keep, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **QUIET_LIMITS, **extra}


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TODO_API, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@contextmanager
def serving(env: dict[str, str], cwd: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [TODO_API, "serve", "--port", str(port), *extra],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_health(base, process):
            process.kill()
            pytest.fail(f"server did not start: {process.communicate()[0]}")
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"BETTER_AUTH_SECRET": "too-short"}, "BETTER_AUTH_SECRET must be at least 32 characters"),
        ({"ENVIRONMENT": "production"}, "BETTER_AUTH_SECRET is required when ENVIRONMENT=production"),
        ({"BETTER_AUTH_SECRET": SECRET, "BCRYPT_ROUNDS": "lots"}, "BCRYPT_ROUNDS"),
        ({"BETTER_AUTH_SECRET": SECRET, "LOGIN_RATE_LIMIT": "10/fortnight"}, "LOGIN_RATE_LIMIT"),
    ],
)
def test_unsafe_settings_stop_the_server_with_a_one_line_reason(
    tmp_path: Path, settings: dict[str, str], reason: str
) -> None:
    result = run(["serve", "--port", str(free_port())], environment(tmp_path, **settings), tmp_path)
    assert result.returncode != 0
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("todo-api:")]) == 1


def test_migrate_then_serve_with_two_workers(tmp_path: Path) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET)
    migrated = run(["migrate"], env, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert run(["migrate"], env, tmp_path).returncode == 0  # idempotent
    with serving(env, tmp_path, "--workers", "2") as (base, _):
        body = signup_body()
        signed_up = httpx.post(f"{base}/api/auth/signup", json=body)
        assert signed_up.status_code == 201
        token = signed_up.json()["access_token"]
        user_id = signed_up.json()["user"]["id"]
        for _ in range(6):  # spread over both workers
            assert (
                httpx.get(f"{base}/api/{user_id}/tasks", headers={"Authorization": f"Bearer {token}"}).status_code
                == 200
            )
        docs = httpx.get(f"{base}/docs")
        assert docs.status_code == 200
        assert "swagger-ui-bundle.js" in docs.text


def test_two_instances_share_accounts_and_tokens(tmp_path: Path) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET)
    if url := os.environ.get("TEST_DATABASE_URL"):
        env["DATABASE_URL"] = url  # the suite's PostgreSQL, already migrated
    else:
        assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path) as (first, _), serving(env, tmp_path) as (second, _):
        body = signup_body()
        user = httpx.post(f"{first}/api/auth/signup", json=body).json()["user"]
        login = httpx.post(f"{second}/api/auth/login", json={"username": body["username"], "password": PASSWORD})
        assert login.status_code == 200
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = httpx.post(f"{second}/api/{user['id']}/tasks", json={"title": "shared"}, headers=auth)
        assert httpx.get(f"{first}{created.headers['location']}", headers=auth).json() == created.json()


def test_development_secret_is_made_once_kept_private_and_shared(tmp_path: Path) -> None:
    env = environment(tmp_path)  # no BETTER_AUTH_SECRET
    assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path, "--workers", "2") as (base, process):
        token = httpx.post(f"{base}/api/auth/signup", json=signup_body()).json()["access_token"]
    output = process.stdout.read() if process.stdout else ""
    assert "BETTER_AUTH_SECRET is not set" in output
    secret_file = tmp_path / ".todo-api-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    with serving(env, tmp_path) as (base, _):  # a restart keeps the secret, so old tokens still work
        assert httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_logs_never_contain_passwords_hashes_or_tokens(tmp_path: Path) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET, LOG_LEVEL="DEBUG")
    assert run(["migrate"], env, tmp_path).returncode == 0
    body = signup_body()
    with serving(env, tmp_path) as (base, process):
        token = httpx.post(f"{base}/api/auth/signup", json=body).json()["access_token"]
        httpx.post(f"{base}/api/auth/login", json={"username": body["username"], "password": PASSWORD})
        httpx.post(f"{base}/api/auth/login", json={"username": body["username"], "password": "wrong-" + PASSWORD})
        auth = {"Authorization": f"Bearer {token}"}
        me = httpx.get(f"{base}/api/auth/me", headers=auth).json()
        httpx.post(f"{base}/api/{me['id']}/tasks", json={"title": "t"}, headers=auth)
        httpx.get(f"{base}/api/{me['id']}/tasks", headers={"Authorization": "Bearer garbage.token.here"})
    logs = process.stdout.read() if process.stdout else ""
    assert "POST /api/auth/login" in logs  # the log was captured at all
    for secret in (PASSWORD, token, token.split(".")[2], SECRET, "$2b$", "garbage.token.here"):
        assert secret not in logs


def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(tmp_path: Path) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET, BCRYPT_ROUNDS="13")  # a login takes ~0.5 s
    assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path) as (base, process):
        body = signup_body()
        assert httpx.post(f"{base}/api/auth/signup", json=body, timeout=30).status_code == 201
        with httpx.Client(timeout=30) as http:
            import threading

            result: dict[str, int] = {}
            login = threading.Thread(
                target=lambda: result.setdefault(
                    "status",
                    http.post(
                        f"{base}/api/auth/login", json={"username": body["username"], "password": PASSWORD}
                    ).status_code,
                )
            )
            login.start()
            time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            login.join(timeout=30)
        assert result["status"] == 200
        assert process.wait(timeout=30) == 0
