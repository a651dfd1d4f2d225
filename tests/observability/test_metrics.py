"""`GET /metrics` in-process: the series the contract names, by route template, the probes left out, the token."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.auth.test_throttling import PROXY, fail_login, random_address
from tests.conftest import AppClient, assert_problem, create_task, sign_up
from tests.events.conftest import events_settings


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_requests_are_counted_by_route_template_never_by_raw_path(app_client: AppClient) -> None:
    client = await app_client()
    owner = await sign_up(client)
    task = await create_task(client, owner)
    template = "/api/{user_id}/tasks/{task_id}"
    before = value(await scrape(client), "http_requests_total", method="GET", route=template, status="200")
    for _ in range(3):
        assert (await client.get(f"{owner.tasks}/{task['id']}", headers=owner.auth)).status_code == 200
    assert (
        await client.get(f"{owner.tasks}/00000000-0000-4000-8000-000000000000", headers=owner.auth)
    ).status_code == 404
    for probe in ("/health", "/ready", "/metrics"):
        await client.get(probe)
    text = await scrape(client)
    assert value(text, "http_requests_total", method="GET", route=template, status="200") == before + 3
    assert value(text, "http_requests_total", method="GET", route=template, status="404") >= 1
    assert value(text, "http_request_duration_seconds_count", method="GET", route=template, status="200") >= 3
    assert owner.id not in text  # no series names a user
    assert task["id"] not in text
    assert not [line for line in text.splitlines() if 'route="/health"' in line or 'route="/metrics"' in line]
    await client.get("/no/such/thing")
    assert value(await scrape(client), "http_requests_total", method="GET", route="unmatched", status="404") >= 1
    for name in ("db_pool_connections_in_use", "db_pool_waiting_requests", "password_hashes_waiting"):
        assert (name, frozenset()) in samples(text)


async def test_rate_limit_rejections_are_counted_by_limit(app_client: AppClient) -> None:
    client = await app_client(login_ip_rate_limit="1/minute", **PROXY)
    before = value(await scrape(client), "rate_limit_rejections_total", limit="login_ip")
    address = random_address()
    assert (await fail_login(client, "nobody", address)).status_code == 401
    assert (await fail_login(client, "nobody", address)).status_code == 429
    assert value(await scrape(client), "rate_limit_rejections_total", limit="login_ip") == before + 1


async def test_with_events_on_the_outbox_backlog_is_reported(app_client: AppClient) -> None:
    client = await app_client(**events_settings(events_publisher="log"))  # no relay: everything waits
    owner = await sign_up(client)
    await create_task(client, owner)
    text = await scrape(client)
    assert value(text, "outbox_pending_events") >= 2
    assert value(text, "outbox_oldest_pending_age_seconds") >= 0
    assert ("outbox_pending_events", frozenset()) in samples(text)


async def test_without_events_there_is_no_outbox_series(app_client: AppClient) -> None:
    client = await app_client()
    assert "outbox_pending_events" not in await scrape(client)


async def test_a_metrics_token_is_required_when_set(app_client: AppClient) -> None:
    client = await app_client(metrics_token="scrape-me-0123456789")
    assert_problem(await client.get("/metrics"), 401, "unauthorized")
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert_problem(wrong, 401, "unauthorized")
    await scrape(client, Authorization="Bearer scrape-me-0123456789")


@pytest.mark.parametrize("enabled", [False])
async def test_metrics_can_be_turned_off(app_client: AppClient, enabled: bool) -> None:
    client = await app_client(metrics_enabled=enabled)
    assert_problem(await client.get("/metrics"), 404, "not-found")
