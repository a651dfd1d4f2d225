"""Real database faults under steady traffic, against real `todo-api serve` processes over real sockets.

The database is a PostgreSQL cluster of the tests' own (initdb + pg_ctl on a free port), so it can be stopped,
frozen (SIGSTOP) or paused behind PgBouncer without harming anybody. The server runs with DB_TIMEOUT=2. While the
fault lasts, every request that needs the database must answer 503 problem+json within DB_TIMEOUT (plus a little
scheduling slack) — never a 500, never a hang — `/ready` 503 and `/health` 200; when the database is back the
same server process recovers by itself, and every task whose creation was answered 201 is there."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, signup_body, wait_for_health
from tests.reliability.conftest import needs_pgbouncer
from tests.reliability.services import PgBouncer, PrivatePostgres
from tests.test_cli import TODO_API, environment, free_port, run

DB_TIMEOUT = 2.0
SLACK = 1.5  # the HTTP round trip and scheduling on a busy 2-core machine
OUTAGE = 2 * DB_TIMEOUT + 1.5  # long enough for requests caught mid-flight to time out, and for fresh ones to fail
RECOVERY_LIMIT = 10.0

REPORT: list[str] = []  # printed at the end of the run by pytest_terminal_summary (tests/reliability/conftest.py)


@dataclass
class Outcome:
    kind: str  # "create" or "list"
    started: float
    finished: float
    status: int  # 0: no HTTP answer at all
    problem: str | None = None  # the problem type of a 503, or what was wrong with it
    task_id: str | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class User:
    id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def sign_up(base: str) -> User:
    response = httpx.post(f"{base}/api/auth/signup", json=signup_body(), timeout=30)
    assert response.status_code == 201, response.text
    body = response.json()
    return User(body["user"]["id"], body["access_token"])


def problem_of(response: httpx.Response) -> str:
    if response.headers.get("content-type") != "application/problem+json":
        return f"content-type {response.headers.get('content-type')}"
    if "retry-after" not in response.headers:
        return "no Retry-After"
    return str(response.json().get("type"))


@dataclass
class Traffic:
    """A few threads, each creating a task then listing, with a short pause, until stopped."""

    base: str
    users: list[User]
    pause: float = 0.02
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for user in self.users:
            thread = threading.Thread(target=self._loop, args=(user,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads), "a client is still waiting for an answer"
        return sorted(self.outcomes, key=lambda outcome: outcome.started)

    def _loop(self, user: User) -> None:
        # The client's own timeout is far above DB_TIMEOUT: a hang shows as a slow answer, not as a client error.
        with httpx.Client(base_url=self.base, headers=user.auth, timeout=30) as http:
            number = 0
            while not self._stop.is_set():
                number += 1
                self._request(http, "create", "POST", f"/api/{user.id}/tasks", {"title": f"steady {number}"})
                self._request(http, "list", "GET", f"/api/{user.id}/tasks", None)
                time.sleep(self.pause)

    def _request(self, http: httpx.Client, kind: str, method: str, path: str, body: object) -> None:
        started = time.monotonic()
        try:
            response = http.request(method, path, json=body)
        except httpx.HTTPError as error:
            outcome = Outcome(kind, started, time.monotonic(), 0, error=repr(error))
        else:
            outcome = Outcome(kind, started, time.monotonic(), response.status_code)
            if response.status_code == 201:
                outcome.task_id = response.json()["id"]
            elif response.status_code >= 300:
                outcome.problem = problem_of(response) if response.status_code == 503 else response.text[:300]
        with self._lock:
            self.outcomes.append(outcome)


def timed_get(base: str, path: str) -> tuple[int, float, httpx.Response]:
    started = time.monotonic()
    response = httpx.get(f"{base}{path}", timeout=30)
    return response.status_code, time.monotonic() - started, response


@dataclass
class OutageReport:
    outcomes: list[Outcome]
    broken_at: float
    repaired_at: float
    ready_during: tuple[int, float]
    health_during: tuple[int, float]

    def after_repair(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= self.repaired_at]

    @property
    def first_success_after_repair(self) -> float:
        """Seconds from the database being back to the first request that started after that and succeeded."""
        ok = [o.finished for o in self.after_repair() if 200 <= o.status < 300]
        return min(ok) - self.repaired_at if ok else float("inf")

    @property
    def last_failure_after_repair(self) -> float:
        """Seconds from the database being back to the answer of the last request that still failed (0: none)."""
        failed = [o.finished for o in self.outcomes if o.status >= 300 and o.finished >= self.repaired_at]
        return max(failed) - self.repaired_at if failed else 0.0


def outage(
    base: str, users: list[User], break_: Callable[[], object], repair: Callable[[], object], after: float = 3.0
) -> OutageReport:
    """Steady traffic; break the database for OUTAGE seconds; repair it; traffic until recovered and `after` more."""
    traffic = Traffic(base, users)
    traffic.start()
    try:
        time.sleep(1.5)  # steady state first
        broken_at = time.monotonic()
        break_()
        time.sleep(DB_TIMEOUT + 0.5)  # requests caught in flight have had their chance to time out
        health = timed_get(base, "/health")
        ready = timed_get(base, "/ready")
        time.sleep(max(0.0, broken_at + OUTAGE - time.monotonic()))
        repair()
        repaired_at = time.monotonic()
        deadline = repaired_at + RECOVERY_LIMIT
        while time.monotonic() < deadline:
            if any(200 <= o.status < 300 and o.started >= repaired_at for o in list(traffic.outcomes)):
                break
            time.sleep(0.05)
        time.sleep(after)
    finally:
        outcomes = traffic.stop()
    return OutageReport(outcomes, broken_at, repaired_at, ready[:2], health[:2])


def check(report: OutageReport, base: str, users: list[User], process_alive: bool, label: str) -> None:
    outcomes = report.outcomes
    statuses = {o.status for o in outcomes}
    unavailable = [o for o in outcomes if o.status == 503]
    slowest = max(outcomes, key=lambda o: o.seconds)
    during = [o for o in outcomes if report.broken_at <= o.started < report.repaired_at]
    REPORT.append(
        f"{label}: {len(outcomes)} requests ({len(during)} during the outage), {len(unavailable)} × 503; "
        f"slowest answer {slowest.seconds:.2f} s (DB_TIMEOUT {DB_TIMEOUT:g} s); /ready during the outage "
        f"{report.ready_during[0]} in {report.ready_during[1]:.2f} s; recovery: first success "
        f"{report.first_success_after_repair:.2f} s and last failure {report.last_failure_after_repair:.2f} s after "
        "the database was back"
    )
    assert statuses <= {200, 201, 503}, [
        (o.kind, o.status, o.problem, o.error) for o in outcomes if o.status not in (200, 201, 503)
    ]
    assert unavailable, "no request saw the fault"
    assert {o.problem for o in unavailable} == {"/problems/unavailable"}
    assert slowest.seconds <= DB_TIMEOUT + SLACK, f"{slowest.kind} took {slowest.seconds:.2f} s"
    assert report.health_during[0] == 200
    assert report.health_during[1] < 1
    assert report.ready_during[0] == 503
    assert report.ready_during[1] <= DB_TIMEOUT + SLACK
    # Recovered by itself: the same process, without a restart.
    assert process_alive
    assert report.first_success_after_repair <= RECOVERY_LIMIT
    settled = [o for o in report.after_repair() if o.started >= report.repaired_at + report.last_failure_after_repair]
    assert settled, "no request after the last failure"
    assert all(200 <= o.status < 300 for o in settled)
    status, _, _ = timed_get(base, "/ready")
    assert status == 200
    # No write that was answered 201 was lost (a 503 may or may not have committed: the client cannot know).
    acknowledged = {o.task_id for o in outcomes if o.task_id is not None}
    stored = set().union(*(stored_task_ids(base, user) for user in users))
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged tasks are missing"
    REPORT.append(f"{label}: {len(acknowledged)} tasks acknowledged with 201, {len(stored)} stored, none lost")


def stored_task_ids(base: str, user: User) -> set[str]:
    ids: set[str] = set()
    with httpx.Client(base_url=base, headers=user.auth, timeout=30) as http:
        page = 1
        while True:
            response = http.get(f"/api/{user.id}/tasks", params={"page": page, "page_size": 100})
            assert response.status_code == 200, response.text
            body = response.json()
            ids.update(task["id"] for task in body["items"])
            if page >= body["pages"]:
                return ids
            page += 1


@contextmanager
def serving(env: dict[str, str], cwd: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`todo-api serve` with its log in a file (an outage logs a lot: a pipe nobody reads would fill and block it)."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen([TODO_API, "serve", "--port", str(port)], env=env, cwd=cwd, stdout=output,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_health(base, process):
            pytest.fail(f"server did not start: {log.read_text()}")
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail(f"server did not stop on SIGTERM: {log.read_text()[-3000:]}")


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    return environment(tmp_path, BETTER_AUTH_SECRET=SECRET, DB_TIMEOUT=str(DB_TIMEOUT), LOG_LEVEL="WARNING")


@pytest.fixture
def database(private_postgres: PrivatePostgres, server_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on the private cluster; the cluster is running again afterwards."""
    url = private_postgres.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    migrated = run(["migrate"], {**server_env, "DATABASE_URL": url}, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    yield url
    if not private_postgres.running():
        private_postgres.start()
    private_postgres.thaw()


def test_database_stopped_then_started(
    private_postgres: PrivatePostgres, database: str, server_env: dict[str, str], tmp_path: Path
) -> None:
    """`pg_ctl stop -m fast` mid-traffic (connections are cut, new ones refused), then `pg_ctl start`."""
    with serving({**server_env, "DATABASE_URL": database}, tmp_path) as (base, process):
        users = [sign_up(base) for _ in range(3)]
        report = outage(base, users, lambda: private_postgres.stop("fast"), private_postgres.start)
        check(report, base, users, process.poll() is None, "postgres stopped (refusing)")


def test_database_that_hangs(
    private_postgres: PrivatePostgres, database: str, server_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGSTOP of the postmaster and every backend: connections and queries hang instead of failing; SIGCONT."""
    with serving({**server_env, "DATABASE_URL": database}, tmp_path) as (base, process):
        users = [sign_up(base) for _ in range(3)]
        report = outage(base, users, private_postgres.freeze, private_postgres.thaw)
        check(report, base, users, process.poll() is None, "postgres frozen (hanging)")


@pytest.fixture
def paused_pgbouncer(private_postgres: PrivatePostgres) -> Iterator[PgBouncer]:
    needs_pgbouncer()
    bouncer = PgBouncer("127.0.0.1", private_postgres.port, pool_size=4).start()
    try:
        yield bouncer
    finally:
        bouncer.destroy()


def test_pooler_that_hangs(
    paused_pgbouncer: PgBouncer, private_postgres: PrivatePostgres, server_env: dict[str, str], tmp_path: Path
) -> None:
    """PgBouncer `PAUSE`: it keeps accepting clients and queues their queries, answering nothing; then `RESUME`.
    The server uses the pooled URL (`?pgbouncer=true`) and migrates over DATABASE_URL_DIRECT."""
    name = f"faults_{uuid.uuid4().hex[:8]}"
    direct = private_postgres.create_database(name)
    env = {**server_env, "DATABASE_URL": paused_pgbouncer.url(name), "DATABASE_URL_DIRECT": direct}
    migrated = run(["migrate"], env, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    with serving(env, tmp_path) as (base, process):
        users = [sign_up(base) for _ in range(3)]
        report = outage(base, users, lambda: paused_pgbouncer.admin("PAUSE"), lambda: paused_pgbouncer.admin("RESUME"))
        check(report, base, users, process.poll() is None, "pgbouncer paused (hanging)")
