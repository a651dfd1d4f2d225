"""Property-based fuzzing of the whole API from its own OpenAPI document, with schemathesis.

The document is the app's (`app.openapi()`, checked equal to what the running app serves at `/openapi.json`).
Every operation gets generated requests, sent in process over ASGI to an app on the suite's database (PostgreSQL
in CI): the document's examples, schemathesis' coverage cases (boundaries, wrong types, missing and extra fields,
undocumented methods) and Hypothesis fuzzing, in positive and negative mode. Protected operations carry a real
account's bearer token (except where a case drops it on purpose); task paths mostly name that account's own
`user_id` (else every case would stop at 403) and often one of its real tasks (else at 404), sometimes another
user's task (which must look missing) and sometimes the task's current ETag in `If-Match`.

Every response must not be a 5xx; must match the status codes, content type (problem+json for errors), headers
and schema the document gives; schema-valid input must not get 400 and invalid input must not succeed (both sides
of the request schemas); an undocumented method gets 405 with an `Allow` listing the documented ones.

Deterministic: generation is derandomized with a fixed seed, and every choice made here is drawn from the case.
"""

from __future__ import annotations

import contextlib
import json
import random
import string
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.conftest import PASSWORD, make_settings, signup_body
from todo_api.auth.passwords import BCRYPT_MAX_BYTES
from todo_api.bounds import MAX_BODY_BYTES
from todo_api.main import create_app

SEED = 20261126
MAX_EXAMPLES = 200  # per operation, for the fuzzing phase; examples and coverage phases add their own cases
POOL = 4  # real tasks kept alive for each account

Case = schemathesis.Case[Any]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
    unsupported_method,  # an undocumented method: 405 with `Allow`
    allow_header_conformance,
]


@dataclass
class Account:
    id: str
    username: str
    token: str
    etags: dict[str, str] = field(default_factory=dict)  # the account's live tasks: id -> current ETag

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class World:
    """The accounts the fuzzer acts as, and what it knows of their tasks."""

    client: asgi.ASGIClient  # the app under test, for the calls made here rather than by schemathesis
    me: Account = field(init=False)
    other: Account = field(init=False)
    counts: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (operation, mode, status) -> requests

    def sign_up(self) -> Account:
        response = self.client.post("/api/auth/signup", json=signup_body())
        assert response.status_code == 201, response.text
        body = response.json()
        account = Account(body["user"]["id"], body["user"]["username"], body["access_token"])
        for _ in range(POOL):
            self.add_task(account)
        return account

    def add_task(self, account: Account) -> None:
        response = self.client.post(f"/api/{account.id}/tasks", json={"title": "seed task"}, headers=account.auth)
        assert response.status_code == 201, response.text
        account.etags[response.json()["id"]] = response.headers["ETag"]

    def aim(self, case: Case) -> None:
        """Point the generated case at real things often enough that it gets past 401, 403 and 404.

        The choices are drawn from the case itself, so they replay with it. Values a negative case made invalid on
        purpose are left alone."""
        if case.headers.get("Authorization") == ACCOUNT_TOKEN:
            case.headers["Authorization"] = f"Bearer {self.me.token}"
        dice = random.Random(_fingerprint(case))
        positive = case.meta is None or case.meta.generation.mode.is_positive
        params, body = case.path_parameters, case.body
        if "user_id" in params and dice.random() < 0.9:
            params["user_id"] = self.me.id
        if "task_id" in params and params["user_id"] == self.me.id and _is_uuid(params["task_id"]):
            chance = dice.random()
            if chance < 0.6:  # one of mine, sometimes with its current ETag
                params["task_id"] = dice.choice(sorted(self.me.etags))
                if positive and "If-Match" in case.headers and dice.random() < 0.5:
                    case.headers["If-Match"] = self.me.etags[params["task_id"]]
            elif chance < 0.7:  # someone else's: must look exactly like a missing one
                params["task_id"] = dice.choice(sorted(self.other.etags))
        if positive and isinstance(case.query, dict) and "cursor" in case.query:
            # A cursor is opaque and signed: no string JSON Schema can draw is one this API made.
            del case.query["cursor"]
        documented_method = case.method.upper() == case.operation.method.upper()  # not a probe with another verb
        if not positive and documented_method and isinstance(body, dict) and dice.random() < 0.05:
            body["padding"] = "x" * MAX_BODY_BYTES  # too large: 413, before anything else is looked at
        if case.path.startswith("/api/auth/") and positive and isinstance(body, dict):
            # The two rules of these bodies JSON Schema cannot state: 72 bytes of UTF-8 (`maxLength` counts
            # characters), and on signup, `confirm_password` equal to `password`.
            password = body.get("password")
            if isinstance(password, str):
                body["password"] = _bcrypt_sized(password)
            if case.path == "/api/auth/signup" and "password" in body:
                body["confirm_password"] = body["password"]
            elif case.path == "/api/auth/login" and dice.random() < 0.3:
                body.pop("email", None)
                body.update(username=self.me.username, password=PASSWORD)

    def observe(self, case: Case, response: schemathesis.Response) -> None:
        """Count; follow the account's tasks: new ones, new ETags, deleted ones (replaced, so that some remain)."""
        mode = case.meta.generation.mode.value if case.meta is not None else "explicit"
        self.counts[(case.operation.label, mode, response.status_code)] += 1
        if "task_id" not in case.path and case.method != "POST":
            return
        if case.path_parameters.get("user_id") != self.me.id or response.status_code >= 300:
            return
        task_id, etag = json.loads(response.content)["id"], response.headers["etag"][0]
        if case.method == "DELETE":
            self.me.etags.pop(task_id, None)
            if len(self.me.etags) < POOL:
                self.add_task(self.me)
        else:
            self.me.etags[task_id] = etag

    def summary(self) -> str:
        by_mode, by_status = Counter[str](), Counter[int]()
        for (_, mode, status), count in self.counts.items():
            by_mode[mode] += count
            by_status[status] += count
        operations = len({label for label, _, _ in self.counts})
        return (
            f"schemathesis {schemathesis.__version__}: {operations} operations, {by_mode.total()} requests "
            f"({', '.join(f'{n} {mode}' for mode, n in sorted(by_mode.items()))}); "
            f"responses {', '.join(f'{status}: {n}' for status, n in sorted(by_status.items()))}"
        )


def _fingerprint(case: Case) -> int:
    """A number that depends only on the generated case."""
    body = None if isinstance(case.body, NotSet) else case.body
    content = [case.method, case.path, case.path_parameters, case.query, body]
    return zlib.crc32(json.dumps(content, sort_keys=True, default=repr).encode())


def _bcrypt_sized(password: str) -> str:
    while len(password.encode()) > BCRYPT_MAX_BYTES:
        password = password[:-1]
    return password


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def start(database_url: str) -> asgi.ASGIClient:
    """The app on this database (rate limits are off in the test settings), running until the current test ends:
    schemathesis' pytest plugin ends every ASGI app's lifespan after each test."""
    client = asgi.get_client(cast(asgi.ASGIApp, create_app(make_settings(database_url))))
    client.__enter__()
    return client


@pytest.fixture(scope="module")
def world(migrated: str, request: pytest.FixtureRequest) -> Iterator[World]:
    world = World(start(migrated))
    # The document fuzzed is the one the running app serves.
    assert world.client.get("/openapi.json").json() == DOCUMENT
    world.me, world.other = world.sign_up(), world.sign_up()
    yield world
    capture = request.config.pluginmanager.get_plugin("capturemanager")  # what `capsys.disabled()` uses
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n{world.summary()}")


@pytest.fixture
def app(world: World, migrated: str) -> asgi.ASGIApp:
    """A fresh app for each operation's test (the plugin ends the previous one's lifespan)."""
    world.client = start(migrated)
    return world.client.app


# Test items are made at collection, one per operation, so the document comes from an app built the same way
# (it does not touch the database); `world` checks that the app under test serves exactly this document.
# (`schemathesis.pytest.from_fixture` would load it from the fixture, but it breaks on pytest >= 9.2: `_nodeid`.)
DOCUMENT = create_app(make_settings("sqlite://")).openapi()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "412"]},
            "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "409", "413"]},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
# `format: email` as the API reads it: email-validator refuses special-use domains such as `.test`, which the default
# generator draws from. Plain dot-atom addresses under ordinary top-level domains (filtering costs too much here).
schemathesis.openapi.format(
    "email",
    st.builds(
        "{}@{}.{}".format,
        st.text(string.ascii_lowercase + string.digits + "_+-", min_size=1, max_size=12),
        st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12),
        st.sampled_from(["com", "org", "net", "io"]),
    ),
)
ACCOUNT_TOKEN = "Bearer <the account's token>"  # stands in for it until `World.aim`: cases exist before accounts


@schema.auth(refresh_interval=None, retry_on=[])
class Bearer:
    """The account's token on every operation the document protects (except where a case leaves it out on purpose)."""

    def get(self, case: Case, context: schemathesis.AuthContext) -> str | None:
        return ACCOUNT_TOKEN if context.operation.definition.raw.get("security") else None

    def set(self, case: Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = data


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # `app`: one per operation on purpose
def test_every_response_matches_the_document(case: Case, world: World, app: asgi.ASGIApp) -> None:
    world.aim(case)
    response = case.call(app=app)
    world.observe(case, response)
    case.validate_response(response, checks=CHECKS)
