"""What every endpoint shares: problem+json errors, request ids, headers, body limits, CORS, docs, health."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import Account, AppClient, assert_problem, make_settings
from todo_api.main import create_app


async def test_unknown_route_is_a_problem_404(client: httpx.AsyncClient, alice: Account) -> None:
    assert_problem(await client.get("/no/such/thing"), 404, "not-found")
    assert_problem(await client.get(f"{alice.tasks}/", headers=alice.auth), 404, "not-found")  # no redirects


async def test_wrong_method_is_a_problem_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert_problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    "slug",
    [
        "validation",
        "unauthorized",
        "forbidden",
        "not-found",
        "method-not-allowed",
        "conflict",
        "precondition-failed",
        "payload-too-large",
        "rate-limited",
        "unavailable",
        "internal",
    ],
)
async def test_every_problem_type_has_a_page(client: httpx.AsyncClient, slug: str) -> None:
    response = await client.get(f"/problems/{slug}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f"/problems/{slug}" in response.text


async def test_request_ids_are_echoed_when_sane_and_made_otherwise(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "abc-123.x:y_z"})
    assert echoed.headers["x-request-id"] == "abc-123.x:y_z"
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        response = await client.get("/health", headers={"X-Request-ID": bad})
        assert response.headers["x-request-id"] != bad
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", response.headers["x-request-id"])
    assert (await client.get("/nope")).headers["x-request-id"]


async def test_every_response_says_nosniff(client: httpx.AsyncClient, alice: Account) -> None:
    for response in (
        await client.get("/health"),
        await client.get("/nope"),
        await client.get(alice.tasks, headers=alice.auth),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.fixture
async def app_with_a_bug(migrated: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(migrated))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_a_500_says_nothing_internal_and_logs_the_traceback_with_the_request_id(
    app_with_a_bug: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await app_with_a_bug.get("/boom", headers={"X-Request-ID": "trace-me-42"})
    body = assert_problem(response, 500, "internal")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert body["detail"]
    assert response.headers["x-request-id"] == "trace-me-42"
    logged = [record for record in caplog.records if record.exc_info]
    assert [getattr(record, "request_id", None) for record in logged] == ["trace-me-42"]
    assert "/boom" in logged[0].getMessage()


async def test_a_body_over_64_kib_is_413(client: httpx.AsyncClient, alice: Account) -> None:
    big = b'{"title": "' + b"x" * (64 * 1024) + b'"}'
    response = await client.post(alice.tasks, content=big, headers={**alice.auth, "Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")


async def test_a_chunked_body_over_64_kib_is_413_even_without_a_token(
    client: httpx.AsyncClient, alice: Account
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = await client.post(alice.tasks, content=chunks(), headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")


async def test_a_chunked_body_under_the_limit_is_read_normally(client: httpx.AsyncClient, alice: Account) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": '
        yield b'"chunked"}'

    response = await client.post(
        alice.tasks, content=chunks(), headers={**alice.auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 201
    assert response.json()["title"] == "chunked"


async def test_health_does_not_need_the_database_and_ready_does(app_client: AppClient) -> None:
    healthy = await app_client()
    assert (await healthy.get("/health")).status_code == 200
    assert (await healthy.get("/ready")).status_code == 200

    down = await app_client(database_url="postgresql://postgres@127.0.0.1:9/none", db_timeout=1)
    assert (await down.get("/health")).status_code == 200
    response = await down.get("/ready")
    assert_problem(response, 503, "unavailable")
    assert int(response.headers["retry-after"]) > 0


def test_a_neon_url_starts_with_a_warning_about_channel_binding(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://neondb_owner:npg_secret@ep-cool-123.eu-central-1.aws.neon.tech/neondb"
    with caplog.at_level("WARNING"):
        create_app(make_settings(f"{url}?sslmode=require&channel_binding=require"))
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("channel_binding" in message for message in warnings), warnings
    assert not any("npg_secret" in record.getMessage() for record in caplog.records)


async def test_requests_that_need_a_dead_database_get_503_not_500(app_client: AppClient, alice: Account) -> None:
    down = await app_client(database_url="postgresql://postgres@127.0.0.1:9/none", db_timeout=1)
    for response in (
        await down.get(alice.tasks, headers=alice.auth),
        await down.post(alice.tasks, json={"title": "x"}, headers=alice.auth),
        await down.post("/api/auth/login", json={"username": alice.username, "password": "whatever-pw"}),
    ):
        assert_problem(response, 503, "unavailable")
        assert "retry-after" in response.headers


async def test_cors_allows_listed_origins_on_success_and_error(app_client: AppClient, alice: Account) -> None:
    client = await app_client(cors_origins="https://app.example.com,https://admin.example.com")
    origin = {"Origin": "https://app.example.com"}
    ok = await client.get(alice.tasks, headers={**alice.auth, **origin})
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "etag" in ok.headers["access-control-expose-headers"].lower() or ok.status_code == 200
    error = await client.get(alice.tasks, headers=origin)
    assert error.status_code == 401
    assert error.headers["access-control-allow-origin"] == "https://app.example.com"
    exposed = {name.strip().lower() for name in error.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "location", "x-request-id", "retry-after"} <= exposed
    assert "access-control-allow-credentials" not in error.headers

    preflight = await client.options(
        alice.tasks,
        headers={
            **origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type, if-match, x-request-id",
        },
    )
    assert preflight.status_code == 200
    assert "PATCH" in preflight.headers["access-control-allow-methods"]


async def test_cors_refuses_unlisted_origins_with_a_problem(app_client: AppClient, alice: Account) -> None:
    client = await app_client(cors_origins="https://app.example.com")
    refused = await client.options(
        alice.tasks, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert_problem(refused, 400, "validation")
    assert refused.headers.get("access-control-allow-origin") != "https://evil.example"
    simple = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


async def test_docs_work_offline(client: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        response = await client.get(page)
        assert response.status_code == 200
        assert "cdn." not in response.text
        assert "fonts.googleapis" not in response.text
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', response.text):
            assert (await client.get(asset)).status_code == 200, asset


async def test_openapi_documents_bearer_auth_and_problems_and_never_422(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "422" not in str([op["responses"].keys() for path in document["paths"].values() for op in path.values()])
    expected = {
        ("/api/auth/signup", "post"): {"201", "400", "409", "429"},
        ("/api/auth/login", "post"): {"200", "400", "401", "429"},
        ("/api/auth/me", "get"): {"200", "401"},
        ("/api/{user_id}/tasks", "post"): {"201", "400", "401", "403"},
        ("/api/{user_id}/tasks", "get"): {"200", "400", "401", "403"},
        ("/api/{user_id}/tasks/{task_id}", "get"): {"200", "400", "401", "403", "404"},
        ("/api/{user_id}/tasks/{task_id}", "put"): {"200", "400", "401", "403", "404", "412"},
        ("/api/{user_id}/tasks/{task_id}", "patch"): {"200", "400", "401", "403", "404", "412"},
        ("/api/{user_id}/tasks/{task_id}/complete", "patch"): {"200", "400", "401", "403", "404", "412"},
        ("/api/{user_id}/tasks/{task_id}", "delete"): {"200", "400", "401", "403", "404", "412"},
    }
    for (path, method), statuses in expected.items():
        operation = document["paths"][path][method]
        assert statuses <= set(operation["responses"]), (path, method)
        success = next(code for code in statuses if code.startswith("2"))
        assert "schema" in operation["responses"][success]["content"]["application/json"]
        for code in statuses - {success}:
            content = operation["responses"][code]["content"]
            assert set(content) == {"application/problem+json"}, (path, method, code)
            assert content["application/problem+json"]["schema"]["$ref"].endswith("/Problem")
            assert content["application/problem+json"]["example"]["status"] == int(code)
        if method in ("post", "put", "patch") and path != "/api/auth/me":
            assert "requestBody" in operation, (path, method)
