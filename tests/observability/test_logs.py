"""LOG_FORMAT=json from a real `todo-api serve`: one JSON object per line, the access line with its fields, and no
secret anywhere."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import LEAKS, PASSWORD, SECRET, signup_body
from tests.test_cli import environment, run, serving

SECRET_SHAPES = LEAKS


def assert_no_secrets(text: str, *secrets: str) -> None:
    assert not SECRET_SHAPES.search(text), SECRET_SHAPES.search(text)
    for secret in (PASSWORD, SECRET, *secrets):
        assert secret not in text


def test_json_logs_are_one_object_per_line_with_the_access_fields(tmp_path: Path) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET, LOG_FORMAT="json")
    assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path) as (base, process):
        body = httpx.post(f"{base}/api/auth/signup", json=signup_body(), timeout=10).json()
        token = body["access_token"]
        headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "json-log-1"}
        tasks = f"{base}/api/{body['user']['id']}/tasks"
        assert httpx.post(tasks, json={"title": "logged"}, headers=headers).status_code == 201
        httpx.post(f"{base}/api/auth/login", json={"username": body["user"]["username"], "password": "wrong pass"})
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    lines = [line for line in output.splitlines() if line.strip()]
    entries: list[dict[str, Any]] = [orjson.loads(line) for line in lines]  # every line is JSON
    for entry in entries:
        assert {"time", "level", "logger", "message", "request_id"} <= set(entry)
        assert entry["time"].endswith("Z")
    [access] = [
        entry for entry in entries if entry["logger"] == "todo_api.access" and entry["request_id"] == "json-log-1"
    ]
    assert access["method"] == "POST"
    assert access["path"] == f"/api/{body['user']['id']}/tasks"
    assert access["route"] == "/api/{user_id}/tasks"
    assert access["status"] == 201
    assert isinstance(access["duration_ms"], float)
    assert access["client"] == "127.0.0.1"
    assert_no_secrets(output, token)


def test_the_text_access_line_stays_human_readable(tmp_path: Path) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET)
    assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path) as (base, process):
        httpx.get(f"{base}/health?token=should-not-appear", headers={"X-Request-ID": "text-log-1"})
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    [line] = [line for line in output.splitlines() if "[text-log-1]" in line]
    assert re.search(r"Z INFO todo_api\.access \[text-log-1\] GET /health 200 \d+\.\d\dms$", line), line
    assert "should-not-appear" not in output
