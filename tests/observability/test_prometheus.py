"""A real Prometheus scraping a real `todo-api serve --workers 2`: the counts it stores add up over both workers,
labelled by route template."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, signup_body
from tests.reliability.services import _wait_for_port, free_port
from tests.test_cli import environment, run, serving


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[object]:
    binary = prometheus_binary()
    if binary is None:
        if os.environ.get("TEST_REQUIRE_SERVICES"):
            pytest.fail("prometheus is required when TEST_REQUIRE_SERVICES is set (apt-get install prometheus)")
        pytest.skip("needs prometheus (apt-get install prometheus)")
    started: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: todo-api\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        data = Path(tempfile.mkdtemp(prefix="prometheus-", dir=tmp_path))
        with (tmp_path / "prometheus.log").open("ab") as log:
            started.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={data}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_for_port(port, 30, "prometheus")
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def query(prometheus: str, expression: str) -> float:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=5)
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_prometheus_sees_one_count_over_both_workers(tmp_path: Path, prometheus_for: object) -> None:
    env = environment(tmp_path, BETTER_AUTH_SECRET=SECRET)
    assert run(["migrate"], env, tmp_path).returncode == 0
    with serving(env, tmp_path, "--workers", "2", "--no-access-log") as (base, _):
        port = int(base.rsplit(":", 1)[1])
        prometheus = prometheus_for(port)  # type: ignore[operator]
        body = httpx.post(f"{base}/api/auth/signup", json=signup_body(), timeout=10).json()
        auth = {"Authorization": f"Bearer {body['access_token']}"}
        tasks = f"{base}/api/{body['user']['id']}/tasks"

        async def traffic() -> None:
            # New connections each time, so both workers take a share.
            async def one() -> int:
                async with httpx.AsyncClient(timeout=10) as client:
                    return (await client.post(tasks, json={"title": "counted"}, headers=auth)).status_code

            assert set(await asyncio.gather(*(one() for _ in range(40)))) == {201}

        asyncio.run(traffic())
        for _ in range(5):
            httpx.get(f"{base}/health", timeout=5)
        expression = 'sum(http_requests_total{route="/api/{user_id}/tasks",method="POST",status="201"})'
        deadline = time.monotonic() + 30
        seen = 0.0
        while time.monotonic() < deadline:
            seen = query(prometheus, expression)
            if seen >= 40:
                break
            time.sleep(0.5)
        assert seen == 40
        assert query(prometheus, 'count(http_requests_total{route="/health"})') == 0
        assert query(prometheus, 'sum(http_requests_total{route="/api/auth/signup",status="201"})') == 1
        assert query(prometheus, "up") == 1
