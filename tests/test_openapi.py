"""The OpenAPI document as client generators need it, the same with or without a server; and route classes that
make the owner check impossible to forget."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from tests.conftest import PROJECT_ROOT, make_settings
from todo_api.main import create_app
from todo_api.routing import OwnerRoute, assert_guarded

OPERATION_IDS = {
    ("post", "/api/{user_id}/tasks"): "createTask",
    ("get", "/api/{user_id}/tasks"): "listTasks",
    ("get", "/api/{user_id}/tasks/{task_id}"): "getTask",
    ("put", "/api/{user_id}/tasks/{task_id}"): "replaceTask",
    ("patch", "/api/{user_id}/tasks/{task_id}"): "updateTask",
    ("patch", "/api/{user_id}/tasks/{task_id}/complete"): "completeTask",
    ("delete", "/api/{user_id}/tasks/{task_id}"): "deleteTask",
    ("delete", "/api/{user_id}/tasks"): "clearCompletedTasks",
    ("get", "/api/{user_id}/tags"): "listTags",
    ("post", "/api/auth/signup"): "signup",
    ("post", "/api/auth/login"): "login",
    ("get", "/api/auth/me"): "getMe",
    ("get", "/health"): "health",
    ("get", "/ready"): "ready",
}


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    result = subprocess.run(
        [str(PROJECT_ROOT / ".venv" / "bin" / "todo-api"), "openapi"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        # Nothing it needs: no secret, no reachable database, production (which would refuse to serve).
        env={"PATH": "/usr/bin:/bin", "ENVIRONMENT": "production", "DATABASE_URL": "postgresql://nobody@192.0.2.1/x"},
        cwd="/",
    )
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_every_operation_has_the_contracts_operation_id_summary_and_tag(document: dict[str, Any]) -> None:
    ops = operations(document)
    assert {key: op["operationId"] for key, op in ops.items()} == OPERATION_IDS
    for key, op in ops.items():
        assert op["summary"], key
        assert op["tags"] in (["auth"], ["tasks"], ["operations"]), key


def test_every_body_is_a_named_schema_and_no_422_anywhere(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for key, op in operations(document).items():
        assert "422" not in op["responses"], key
        if "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert set(schema) == {"$ref"}, key
            assert schema["$ref"].removeprefix("#/components/schemas/") in schemas
        for status, response in op["responses"].items():
            for media, content in response.get("content", {}).items():
                assert set(content["schema"]) == {"$ref"}, (key, status)
                if status.startswith(("4", "5")):
                    assert media == "application/problem+json", (key, status)
                    assert content["example"]["status"] == int(status)
    assert not [name for name in schemas if name.endswith(("-Input", "-Output"))]
    assert "HTTPValidationError" not in schemas
    # A title-only create is valid by the document: every other field has a default.
    assert schemas["TaskWrite"]["required"] == ["title"]
    complete = operations(document)[("patch", "/api/{user_id}/tasks/{task_id}/complete")]
    assert complete["requestBody"]["required"] is False


def test_exactly_the_protected_operations_declare_the_bearer_scheme(document: dict[str, Any]) -> None:
    for (method, path), op in operations(document).items():
        public = path in ("/api/auth/signup", "/api/auth/login", "/health", "/ready")
        assert ("security" in op) is not public, (method, path)


async def test_the_served_document_is_the_one_written_without_a_server(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    served = (await client.get("/openapi.json")).json()
    assert served == document


def test_the_committed_client_document_is_current(document: dict[str, Any]) -> None:
    committed = Path(PROJECT_ROOT / "clients" / "typescript" / "openapi.json")
    assert json.loads(committed.read_text()) == document, "run `make client` and commit the result"


def test_an_owner_route_needs_a_user_id_in_its_path() -> None:
    router = APIRouter(route_class=OwnerRoute)

    async def endpoint() -> None: ...

    with pytest.raises(ValueError, match="user_id"):
        router.add_api_route("/api/things", endpoint)


def test_an_api_route_without_a_token_check_stops_the_app(migrated: str) -> None:
    app: FastAPI = create_app(make_settings(migrated))

    @app.get("/api/{user_id}/secrets")
    async def secrets(user_id: str) -> None: ...

    with pytest.raises(RuntimeError, match="secrets"):
        assert_guarded(app)
