"""Fixtures for the reliability tests: a private PostgreSQL cluster and PgBouncers the tests start themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.reliability.services import PgBouncer, PrivatePostgres, pgbouncer_bin, postgres_bin


def needs(what: str, available: bool) -> None:
    """Skip (fail under TEST_REQUIRE_SERVICES=1, as in CI) when a service these tests need is missing."""
    if available:
        return
    if os.environ.get("TEST_REQUIRE_SERVICES"):
        pytest.fail(f"{what} is required when TEST_REQUIRE_SERVICES is set")
    pytest.skip(f"needs {what}")


def needs_postgres() -> None:
    needs("PostgreSQL (TEST_DATABASE_URL)", bool(os.environ.get("TEST_DATABASE_URL")))
    needs("PostgreSQL's initdb and pg_ctl", postgres_bin() is not None)


def needs_pgbouncer() -> None:
    needs_postgres()
    needs("pgbouncer (apt-get install -y pgbouncer)", pgbouncer_bin() is not None)


def direct_test_database_url() -> str:
    """The suite's PostgreSQL database, not through a pooler (the pooler pass sets TEST_DATABASE_URL_DIRECT)."""
    return os.environ.get("TEST_DATABASE_URL_DIRECT") or os.environ["TEST_DATABASE_URL"]


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the tests' own, so stopping and freezing it harms nobody."""
    needs_postgres()
    cluster = PrivatePostgres().init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def suite_pgbouncer(migrated: str) -> Iterator[tuple[PgBouncer, str]]:
    """PgBouncer (transaction pooling, 2 server connections) in front of the suite's migrated database, and the
    pooled URL of that database."""
    needs_pgbouncer()
    direct = make_url(direct_test_database_url())
    bouncer = PgBouncer(direct.host or "127.0.0.1", direct.port or 5432, pool_size=2).start()
    try:
        yield bouncer, bouncer.url(direct.database or "postgres")
    finally:
        bouncer.destroy()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.reliability.test_database_faults import REPORT

    if REPORT:
        terminalreporter.section("database faults: recovery")
        for line in REPORT:
            terminalreporter.write_line(line)
