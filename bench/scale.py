"""`make bench-scale`: todo-api on a table of 1,000,000 tasks.

    .venv/bin/python bench/scale.py [--tasks 1000000] [--users 10000] [--big 100000] [--small 10]
        [--deep-pages 1000,4000] [--runs 3] [--duration 4] [--connections 100] [--workers 1] [--keep-db] ...

1. A fresh database (`todo_bench_scale` on --pg-url), its schema made by `todo-api migrate`.
2. --tasks tasks over --users owners loaded straight into `tasks` with COPY (through `psql \\copy`), in
   creation order, so every owner's rows are spread over the whole table as they would be after years of use.
   Owner 0 ("big") has --big tasks, owner 1 ("small") --small, the others share the rest at random. The table's
   secondary indexes are dropped before the COPY and re-created after it from their own definitions
   (pg_get_indexdef), then VACUUM (ANALYZE): statistics, and the visibility map that index-only scans need
   (autovacuum may be off, and would otherwise start in the middle of the measurements).
3. `todo-api serve --workers 1` on that database. The owners need no row in `users`: their tokens are HS256,
   signed here with the server's BETTER_AUTH_SECRET, claims sub / iat / exp (and iss / aud when JWT_ISSUER /
   JWT_AUDIENCE are set).
4. The SQL of a default listing as the server sent it (pg_stat_activity, right after one such request; the
   statement compiled from todo_api.tasks.service as a fallback), and EXPLAIN (ANALYZE, BUFFERS) of it for
   the big owner, the small one, a deep page of the big one and the generic plan of a prepared statement.
5. wrk (bench/run.py's machinery and Lua scripts) per case, small and big owner interleaved: `list` first page
   for each sort_by x sort_order, deep pages of the big owner, `get`, `create` (last: it grows the lists).
   Reported per case: req/s, p50/p99/max, errors, server CPU and PostgreSQL CPU (the database's backends) per
   request, and for first pages the ratios big / small.
6. The server is stopped and the database dropped (unless --keep-db).

Output: the table on stdout, the plans too; JSON (with the plans) under bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import jwt
import orjson
from run import (
    NO_THROTTLING,
    REPO_DIR,
    RESULTS_DIR,
    BenchError,
    Options,
    SeedUser,
    Server,
    fresh_database,
    log,
    managed_server,
    measure,
    require_wrk,
    run_tool,
    server_env,
    summarise,
    write_lua_data,
)

COLUMNS = (
    "id", "user_id", "title", "title_key", "description", "completed", "version", "created_at", "updated_at",
    "priority", "due_at", "tags", "completed_at",
)  # fmt: skip
SORTS = ("created_at", "updated_at", "title", "completed", "priority", "due_at")
# 40 tags; each task carries 0-3 of them, the first ones more often (so "home" is common, "t39" rare).
TAGS = ("home", "work", "errand", "phone", *(f"t{i}" for i in range(4, 40)))
# The filtered first pages (of the big owner against the small one): a common tag, a priority, a due range.
FILTERS = {
    "tag": "?tag=home",
    "priority": "?priority=high",
    "due range": "?due_min=2026-01-01T00:00:00Z&due_max=2026-02-01T00:00:00Z",
}
ORDERS = ("desc", "asc")
SPAN = timedelta(days=730)  # created_at spread over the two years before the load
CLK_TCK = os.sysconf("SC_CLK_TCK")
US = 1_000_000

VERBS = ("Buy", "Call", "Email", "Fix", "Review", "Write", "Plan", "Book", "Pay", "Clean", "Read", "Send", "Check")
NOUNS = (
    "milk", "report", "invoice", "dentist", "slides", "garden", "car", "tickets", "budget", "café bill",
    "Überweisung", "newsletter", "backlog", "résumé", "roof", "taxes", "flat", "Zoë's gift", "bike", "server",
)  # fmt: skip
PHRASES = (
    "before the weekend",
    "ask about the discount",
    "see the thread from Monday",
    "needs the signed copy",
    "low priority, but do not forget",
    "waiting on the reply",
)


# --- the data ---


@dataclass
class Owner:
    label: str  # "big", "small" or "other"
    id: str
    count: int


def plan_owners(users: int, tasks: int, big: int, small: int, rng: random.Random) -> list[Owner]:
    """Owner 0 has `big` tasks, owner 1 `small`, the others share the rest at random (about equally)."""
    if users < 3 or big + small > tasks:
        raise BenchError("need at least 3 users and --big + --small <= --tasks")
    owners = [Owner("big", "", big), Owner("small", "", small)] + [Owner("other", "", 0) for _ in range(users - 2)]
    for owner in owners:
        owner.id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    for i in rng.choices(range(2, users), k=tasks - big - small):
        owners[i].count += 1
    return owners


def task_events(owners: list[Owner], rng: random.Random) -> list[tuple[int, int, int, int, bool]]:
    """(created_us, updated_us, owner index, version, completed) for every task, in creation order.

    Many timestamps are identical: the big owner made half of its tasks in imports of 500 that share one
    created_at, the others a fifth in groups of 5; a group that was edited later was edited in bulk (one
    updated_at, completed together). Half the tasks were never edited: updated_at = created_at, version 1;
    an edited task has version 2-4 and a later updated_at, as the API would have left it."""
    span_us = int(SPAN.total_seconds() * US)
    events: list[tuple[int, int, int, int, bool]] = []
    for index, owner in enumerate(owners):
        group_size, grouped_share = (500, 0.5) if owner.count >= 10_000 else (5, 0.2)
        start_group = grouped_share / (group_size - grouped_share * (group_size - 1))  # P(a draw is a group)
        left = owner.count
        while left:
            size = min(left, group_size) if rng.random() < start_group else 1
            left -= size
            created = rng.randrange(span_us)
            edited = rng.random() < 0.5
            updated = min(created + int(rng.expovariate(1 / (3 * 86400 * US))), span_us - 1) if edited else created
            bulk_completed = rng.random() < 0.6
            for _ in range(size):
                if edited:
                    completed = bulk_completed if size > 1 else rng.random() < 0.6
                    events.append((created, updated, index, rng.randint(2, 4), completed))
                else:
                    events.append((created, created, index, 1, rng.random() < 0.05))
    events.sort(key=lambda e: e[0])
    return events


def title_of(rng: random.Random) -> str:
    title = f"{rng.choice(VERBS)} {rng.choice(NOUNS)} {rng.randrange(1000)}"
    style = rng.random()
    if style < 0.25:
        return title.lower()
    if style < 0.35:
        return title.title()
    if style < 0.40:
        return title.upper()
    return title


def csv_rows(owners: list[Owner], rng: random.Random) -> Iterator[tuple[str | None, ...]]:
    """The rows of `tasks` in COPY's CSV form (None: NULL), in creation order, every column as the API sets it:
    title_key = title.lower() (what the service stores), description NULL for about a third."""
    start = datetime.now(UTC).replace(microsecond=0) - SPAN - timedelta(days=1)
    for created, updated, index, version, completed in task_events(owners, rng):
        title = title_of(rng)
        description = None if rng.random() < 0.33 else f"{title}: {rng.choice(PHRASES)}"
        created_at = (start + timedelta(microseconds=created)).isoformat()
        updated_at = created_at if updated == created else (start + timedelta(microseconds=updated)).isoformat()
        due = None
        if rng.random() < 0.6:  # most tasks have a due date, within a year either side of now
            due = (datetime.now(UTC) + timedelta(days=rng.uniform(-365, 365))).isoformat()
        tags = sorted({TAGS[min(int(rng.expovariate(0.15)), len(TAGS) - 1)] for _ in range(rng.randint(0, 3))})
        yield (
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            owners[index].id,
            title,
            title.lower(),
            description,
            "t" if completed else "f",
            str(version),
            created_at,
            updated_at,
            str(rng.randint(0, 3)),
            due,
            "{" + ",".join(tags) + "}",
            updated_at if completed else None,
        )


# --- PostgreSQL through psql ---


def psql_command(database_url: str) -> tuple[list[str], dict[str, str]]:
    parts = urlsplit(database_url)
    if shutil.which("psql") is None:
        raise BenchError("psql is not on PATH (Debian: apt-get install -y postgresql-client)")
    cmd = ["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    cmd += ["-d", parts.path.lstrip("/")]
    env = {**os.environ, **({"PGPASSWORD": parts.password} if parts.password else {})}
    return cmd, env


def psql(database_url: str, *commands: str, script: str | None = None) -> str:
    """Run each command (a separate -c: its own transaction, session settings kept), or a script on stdin."""
    cmd, env = psql_command(database_url)
    for command in commands:
        cmd += ["-c", command]
    if script is not None:
        cmd += ["-f", "-"]
    proc = subprocess.run(cmd, env=env, input=script, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise BenchError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def copy_tasks(database_url: str, rows: Iterator[tuple[str | None, ...]]) -> int:
    """Stream the rows into `tasks` with COPY ... FROM STDIN (CSV); return how many were sent."""
    cmd, env = psql_command(database_url)
    cmd += ["-c", f"\\copy tasks ({', '.join(COLUMNS)}) FROM pstdin WITH (FORMAT csv)"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    assert proc.stdin is not None
    assert proc.stderr is not None
    sent = 0
    try:
        with io.TextIOWrapper(proc.stdin, encoding="utf-8", newline="", write_through=False) as pipe:
            writer = csv.writer(pipe, lineterminator="\n")
            for row in rows:
                writer.writerow(row)
                sent += 1
    except BrokenPipeError:
        pass  # psql stopped reading: its error follows
    error = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise BenchError(f"COPY into tasks failed: {error.strip()}")
    return sent


def load(database_url: str, owners: list[Owner], rng: random.Random) -> dict[str, float]:
    """Drop the secondary indexes, COPY, re-create them as they were, VACUUM (ANALYZE). Returns seconds per step."""
    seconds: dict[str, float] = {}
    started = time.monotonic()
    indexes = [
        line.split("\x1f")
        for line in psql(
            database_url,
            "SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'tasks'::regclass AND NOT i.indisprimary AND NOT i.indisunique ORDER BY 1",
        ).splitlines()
        if line
    ]
    if psql(database_url, "SELECT count(*) FROM tasks").strip() != "0":
        raise BenchError("the fresh database's tasks table is not empty")
    for name, _ in indexes:
        psql(database_url, f'DROP INDEX "{name}"')
    # The per-owner counters (migration 0003) are kept by a row trigger: off for the bulk load, then filled at once.
    psql(database_url, "ALTER TABLE tasks DISABLE TRIGGER task_counts_follow")
    sent = copy_tasks(database_url, csv_rows(owners, rng))
    psql(
        database_url,
        "INSERT INTO task_counts (user_id, total, completed) SELECT user_id, count(*), "
        "sum(CASE WHEN completed THEN 1 ELSE 0 END) FROM tasks GROUP BY user_id",
        "ALTER TABLE tasks ENABLE TRIGGER task_counts_follow",
    )
    seconds["generate_and_copy"] = round(time.monotonic() - started, 1)
    log(f"copied {sent:,} tasks in {seconds['generate_and_copy']} s; re-creating {len(indexes)} indexes")
    started = time.monotonic()
    psql(database_url, "SET maintenance_work_mem = '512MB'", *(definition for _, definition in indexes))
    seconds["create_indexes"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    psql(database_url, "VACUUM (ANALYZE) tasks", "VACUUM (ANALYZE) task_counts")
    seconds["vacuum_analyze"] = round(time.monotonic() - started, 1)
    log(f"indexes in {seconds['create_indexes']} s, VACUUM (ANALYZE) in {seconds['vacuum_analyze']} s")
    after = psql(database_url, "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'tasks'::regclass")
    missing = {definition for _, definition in indexes} - set(after.splitlines())
    if missing:
        raise BenchError(f"indexes missing after the load: {sorted(missing)}")
    return seconds


def database_backends(database: str) -> list[int]:
    """pids of the PostgreSQL backends connected to `database` (by their process titles; same machine)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("postgres:") and f" {database} " in title:
                pids.append(int(entry.name))
    return pids


def process_cpu(pids: list[int]) -> dict[int, float]:
    cpu = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return cpu


# --- the SQL of a listing, and its plans ---


def captured_list_sql(database_url: str) -> str | None:
    """The text of the last listing statement a server connection ran (call right after a list request)."""
    text = psql(
        database_url,
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND query ILIKE '%AS counted%' ORDER BY query_start DESC LIMIT 1",
    ).strip()
    limit = int(psql(database_url, "SHOW track_activity_query_size").strip().removesuffix("kB") or 1) * 1024
    return text if text and len(text.encode()) < limit - 1 else None  # a full-size text may be truncated


def compiled_list_sql() -> tuple[str, list[str]] | None:
    """The default listing compiled from todo_api.tasks.repository (read-only use), with its parameter names in
    order. Looked up dynamically: the service's internals may change, and this is only a fallback."""
    try:
        dialect = importlib.import_module("sqlalchemy.dialects.postgresql.asyncpg").dialect()
        service = importlib.import_module("todo_api.tasks.repository")
        statement = service._page_statement(
            service._Shape("postgresql", "created_at", "desc", *([False] * 3), 0, *([False] * 3))
        )
        compiled = statement.compile(dialect=dialect)
        # The statement's own literals (e.g. the 0 of coalesce(total, 0)) are parameters with a value.
        LITERALS.update(
            {name: repr(bind.effective_value) for name, bind in compiled.binds.items() if not bind.required}
        )
        return str(compiled), list(compiled.positiontup or [])
    except Exception as exc:
        log(f"note: could not compile the listing statement from todo_api.tasks.repository: {exc!r}")
        return None


def explain(database_url: str, sql: str, params: list[str], generic: bool = False) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the prepared statement, the second of two executions (warm cache)."""
    args = ", ".join(params)
    script = "\n".join(
        [
            "SET plan_cache_mode = force_generic_plan;" if generic else "",
            f"PREPARE listing AS {sql};",
            "\\o /dev/null",
            f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE listing({args});",
            "\\o",
            f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE listing({args});",
        ]
    )
    return psql(database_url, script=script).rstrip()


LITERALS: dict[str, str] = {}


def list_params(names: list[str], owner: str, limit: int, offset: int) -> list[str]:
    values = {**LITERALS, "owner": f"'{owner}'", "limit": str(limit), "offset": str(offset)}
    missing = [n for n in names if n not in values]
    if missing:
        raise BenchError(f"the listing statement has parameters this script does not know: {missing}")
    return [values[n] for n in names]


def capture_plans(database_url: str, base_url: str, owners: list[Owner], tokens: dict[str, str]) -> dict[str, Any]:
    big, small = owners[0], owners[1]
    with httpx.Client(base_url=base_url, timeout=60) as client:
        response = client.get(
            f"/api/{quote(big.id, safe='')}/tasks", headers={"Authorization": f"Bearer {tokens[big.id]}"}
        )
    captured = captured_list_sql(database_url) if response.status_code == 200 else None
    compiled = compiled_list_sql()
    if captured is not None:
        sql, source = captured, "pg_stat_activity (the text the server sent)"
        names = compiled[1] if compiled and compiled[0].strip() == captured else ["owner", "limit", "offset"]
        if compiled and compiled[0].strip() != captured:
            log("note: the captured SQL differs from the compiled statement; assuming $1 owner, $2 limit, $3 offset")
    elif compiled is not None:
        sql, names, source = compiled[0], compiled[1], "compiled from todo_api.tasks.service"
    else:
        raise BenchError("could not get the listing SQL from pg_stat_activity nor by compiling it")
    if len(set(re.findall(r"\$(\d+)", sql))) != len(names):
        raise BenchError(f"the listing SQL has other parameters than {names}:\n{sql}")
    deep = 4000 if big.count >= 80_000 else max(1, big.count // 25)
    plans = {
        "big": explain(database_url, sql, list_params(names, big.id, 20, 0)),
        "small": explain(database_url, sql, list_params(names, small.id, 20, 0)),
        f"big_page_{deep}": explain(database_url, sql, list_params(names, big.id, 20, (deep - 1) * 20)),
        "big_generic": explain(database_url, sql, list_params(names, big.id, 20, 0), generic=True),
        f"big_page_{deep}_generic": explain(
            database_url, sql, list_params(names, big.id, 20, (deep - 1) * 20), generic=True
        ),
    }
    return {
        "sql": sql,
        "source": source,
        "matches_compiled": compiled is not None and compiled[0].strip() == sql.strip(),
        "parameters": names,
        "plans": plans,
    }


# --- the measurements ---


@dataclass
class Case:
    name: str
    scenario: str  # bench/lua/<scenario>.lua
    query: str = ""  # of `list` requests
    owners: tuple[str, ...] = ("small", "big")
    first_page: bool = False
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def cases(deep_pages: list[int]) -> list[Case]:
    found = [
        Case(f"list {s} {o}", "list", f"?sort_by={s}&sort_order={o}", first_page=True) for s in SORTS for o in ORDERS
    ]
    found += [Case(f"list {name}", "list", query, first_page=True) for name, query in FILTERS.items()]
    found += [Case(f"list page {p}", "list", f"?page={p}", ("big",)) for p in deep_pages]
    # Keyset pages at the same depths (and the last page): the cursor of page p-1's answer, fetched at run time.
    found += [Case(f"list cursor {p}", "list", f"cursor:{p}", ("big",)) for p in [*deep_pages, -1]]
    return [*found, Case("get", "get"), Case("create", "create")]  # create last: it grows the lists


def cursor_query(server_url: str, owner: Owner, token: str, page: int) -> str:
    """`?cursor=…` for page `page` of the owner's default listing (-1: its last page), from page-1's answer."""
    if page == -1:
        page = max(1, -(-owner.count // 20))
    with httpx.Client(base_url=server_url, timeout=120) as client:
        response = client.get(
            f"/api/{quote(owner.id, safe='')}/tasks",
            params={"page": max(1, page - 1)},
            headers={"Authorization": f"Bearer {token}"},
        )
    response.raise_for_status()
    cursor = response.json()["next_cursor"]
    if cursor is None:
        raise BenchError(f"page {page - 1} of the big owner has no next page")
    return f"?cursor={cursor}"


def mint(secret: str, owner_id: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": owner_id, "iat": now, "exp": now + 6 * 3600}
    if os.environ.get("JWT_ISSUER"):
        claims["iss"] = os.environ["JWT_ISSUER"]
    if os.environ.get("JWT_AUDIENCE"):
        claims["aud"] = os.environ["JWT_AUDIENCE"]
    return jwt.encode(claims, secret, algorithm="HS256")


def check_server(base_url: str, owners: list[Owner], tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for owner in owners[:2]:
            path = f"/api/{quote(owner.id, safe='')}/tasks"
            response = client.get(path, headers={"Authorization": f"Bearer {tokens[owner.id]}"})
            if response.status_code != 200 or response.json().get("total") != owner.count:
                raise BenchError(
                    f"GET {path}: expected 200 with total {owner.count}, got {response.status_code}: "
                    f"{response.text[:300]}"
                )


def run_cases(
    server_url: str,
    server_pid: int,
    database: str,
    database_url: str,
    owners: list[Owner],
    tokens: dict[str, str],
    args: argparse.Namespace,
) -> list[Case]:
    opts = Options(duration=args.duration, connections=args.connections, threads=args.threads, runs=args.runs)
    by_label = {o.label: o for o in owners[:2]}
    task_ids = {
        label: psql(
            database_url,
            f"SELECT id FROM tasks WHERE user_id = '{o.id}' ORDER BY random() LIMIT 1000",  # noqa: S608 -- our uuid
        ).split()
        for label, o in by_label.items()
    }
    todo = cases([int(p) for p in args.deep_pages.split(",") if p.strip()])
    with tempfile.TemporaryDirectory(prefix="todo-bench-scale-") as tmp:
        for case in todo:
            servers = {}
            for label in case.owners:
                owner = by_label[label]
                user = SeedUser(id=owner.id, name=label, token=tokens[owner.id], tasks=task_ids[label])
                data_file = Path(tmp) / f"{label}.lua"
                query = case.query
                if query.startswith("cursor:"):
                    query = cursor_query(server_url, owner, tokens[owner.id], int(query.removeprefix("cursor:")))
                write_lua_data(data_file, server_url, {"users": [user], "writers": [user]}, query)
                servers[label] = Server(label, server_url, server_pid, data_file)
                case.results[label] = []
            for i in range(args.runs):
                for label, server in servers.items():
                    runs = case.results[label]
                    backends = database_backends(database)
                    db_before = process_cpu(backends)
                    run = measure(server, case.scenario, sum(r["requests"] for r in runs), opts)
                    db_after = process_cpu(sorted(set(backends) | set(database_backends(database))))
                    db_cpu = sum(after - db_before.get(pid, 0.0) for pid, after in db_after.items())
                    run["db_cpu_ms_per_req"] = round(db_cpu * 1000 / (run["requests"] + opts.connections), 3)
                    runs.append(run)
                    log(
                        f"  {case.name:<24} run {i + 1}/{args.runs} {label:<5} {run['rps']:>9.1f} req/s  "
                        f"p50 {run['p50_ms']:8.2f} ms  p99 {run['p99_ms']:8.2f} ms  non-2xx {run['non2xx']}"
                    )
            # the data files are rewritten per case: the next case's wrk reads its own
    return todo


# --- the report ---


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    m = summarise(runs)
    m["db_cpu_ms_per_req"] = round(statistics.median(r["db_cpu_ms_per_req"] for r in runs), 3)
    m["errors"] = m["non2xx"] + m["socket_errors"]
    return m


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(of: dict[str, Any], to: dict[str, Any]) -> dict[str, float | None]:
    """How much costlier `of` is than `to`: time per request (at the same concurrency: inverse req/s), p50, p99,
    CPU per request."""
    return {
        "time_per_req": _ratio(to["rps"], of["rps"]),
        "p50": _ratio(of["p50_ms"], to["p50_ms"]),
        "p99": _ratio(of["p99_ms"], to["p99_ms"]),
        "cpu_ms_per_req": _ratio(of["cpu_ms_per_req"], to["cpu_ms_per_req"]),
        "db_cpu_ms_per_req": _ratio(of["db_cpu_ms_per_req"], to["db_cpu_ms_per_req"]),
    }


# (heading, width, key, decimals)
TABLE = (
    ("req/s", 9, "rps", 1),
    ("p50 ms", 9, "p50_ms", 2),
    ("p99 ms", 9, "p99_ms", 2),
    ("max ms", 9, "max_ms", 1),
    ("errors", 6, "errors", 0),
    ("app ms/req", 10, "cpu_ms_per_req", 3),
    ("db ms/req", 9, "db_cpu_ms_per_req", 3),
)
RATIO_KEYS = {
    "rps": "time_per_req",
    "p50_ms": "p50",
    "p99_ms": "p99",
    "cpu_ms_per_req": "cpu_ms_per_req",
    "db_cpu_ms_per_req": "db_cpu_ms_per_req",
}


def _line(case: str, who: str, values: dict[str, Any], ratio: bool = False) -> str:
    cells = []
    for _, width, key, digits in TABLE:
        value = values.get(RATIO_KEYS.get(key, "-") if ratio else key)
        text = "" if ratio and key not in RATIO_KEYS else "-"
        if isinstance(value, int | float):
            text = f"{value:.2f}x" if ratio else f"{value:.{digits}f}"
        elif isinstance(value, str):
            text = value
        cells.append(f"{text:>{width}}")
    return f"{case:<22} {who:<11} {' '.join(cells)}".rstrip()


def build_report(todo: list[Case], owners: list[Owner], args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"cases": {}}
    for case in todo:
        entry: dict[str, Any] = {
            "query": case.query,
            **{label: {"median": median_of(runs), "runs": runs} for label, runs in case.results.items()},
        }
        if "small" in entry and "big" in entry:
            entry["big_over_small"] = ratios(entry["big"]["median"], entry["small"]["median"])
        report["cases"][case.name] = entry
    first = report["cases"].get("list created_at desc", {}).get("big")
    for name, entry in report["cases"].items():
        if name.startswith(("list page ", "list cursor ")) and first:
            entry["over_first_page"] = ratios(entry["big"]["median"], first["median"])
    worst = max(
        ((name, e["big_over_small"]["time_per_req"] or 0.0) for name, e in report["cases"].items() if "list " in name
         and "big_over_small" in e and e.get("query") not in FILTERS.values()),
        key=lambda item: item[1],
        default=("-", 0.0),
    )  # fmt: skip
    report["first_pages_worst"] = {"case": worst[0], "time_per_req": worst[1], "target": 1.5}
    return report


def format_report(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"todo-api at scale {meta['started']}: {meta['tasks']:,} tasks over {meta['users']:,} owners; big owner "
        f"{meta['big']:,} tasks, small owner {meta['small']}; todo-api serve --workers {meta['workers']}",
        f"medians of {meta['runs']} run(s) x {meta['duration']} s, wrk -t{meta['threads']} -c{meta['connections']}, "
        f"one owner per run; load {meta['load_seconds']}",
        "",
        _line("case", "owner", {key: heading for heading, _, key, _ in TABLE}),
    ]
    for name, entry in report["cases"].items():
        label = name
        for who in ("small", "big"):
            if who in entry:
                lines.append(_line(label, who, entry[who]["median"]))
                label = ""
        if "big_over_small" in entry:
            lines.append(_line("", "big/small", entry["big_over_small"], ratio=True))
        if "over_first_page" in entry:
            lines.append(_line("", "/page 1", entry["over_first_page"], ratio=True))
    worst = report["first_pages_worst"]
    verdict = "met" if worst["time_per_req"] <= worst["target"] else "NOT met"
    lines += [
        "",
        f"first pages, big / small time per request: worst {worst['time_per_req']:.2f}x ({worst['case']}); "
        f"target <= {worst['target']}x: {verdict}",
    ]
    for name, entry in report["cases"].items():
        if "over_first_page" in entry:
            r = entry["over_first_page"]
            lines.append(
                f"{name} (big owner): {r['time_per_req']}x the time per request of page 1, p50 {r['p50']}x, "
                f"db CPU {r['db_cpu_ms_per_req']}x"
            )
    lines += [
        "",
        "ratio rows: time per request (inverse req/s at the same concurrency), p50, p99, app CPU and db CPU per "
        "request of the first row over the second; app: the server's CPU; db: CPU of the PostgreSQL backends of "
        "this database (parallel workers not included); errors: non-2xx, socket errors and timeouts",
    ]
    return "\n".join(lines)


def feature_plans(database_url: str, big: Owner) -> dict[str, str]:
    """EXPLAIN (ANALYZE) of the big owner's first pages for the sorts and filters of migration 0004, and of a
    keyset page 4,000 pages deep: the statements the repository builds, their parameters as SQL literals."""
    repository = importlib.import_module("todo_api.tasks.repository")
    dialect = importlib.import_module("sqlalchemy.dialects.postgresql.asyncpg").dialect()
    deep = (
        psql(
            database_url,
            "SELECT created_at::text || '|' || id::text FROM tasks WHERE user_id = "  # noqa: S608 -- our own uuid
            f"'{big.id}' ORDER BY created_at DESC, id DESC OFFSET {min(big.count - 1, 79_999)} LIMIT 1",
        )
        .strip()
        .split("|")
    )
    owner = f"'{big.id}'"
    values = {"owner": owner, "limit": "21", "offset": "0", "tags": "ARRAY['t12']::text[]", "priority": "3",
              "due_min": "'2026-01-01T00:00:00Z'::timestamptz", "due_max": "'2026-02-01T00:00:00Z'::timestamptz",
              "after_key": f"'{deep[0]}'::timestamptz", "after_id": f"'{deep[-1]}'::uuid"}  # fmt: skip
    shapes: dict[str, tuple[str, str, dict[str, int]]] = {
        "sort priority desc": ("priority", "desc", {}),
        "sort due_at asc": ("due_at", "asc", {}),
        "sort due_at desc": ("due_at", "desc", {}),
        "tag filter (t12)": ("created_at", "desc", {"tags": 1}),
        "priority filter": ("created_at", "desc", {"priority": 1}),
        "due range": ("created_at", "desc", {"due_min": 1, "due_max": 1}),
        "cursor page 4000": ("created_at", "desc", {"after": 1}),
    }
    plans = {}
    for name, (sort_by, order, flags) in shapes.items():
        shape = repository._Shape(
            "postgresql", sort_by, order, completed=False, q=False, priority=bool(flags.get("priority")),
            tags=int(flags.get("tags", 0)), due_min=bool(flags.get("due_min")), due_max=bool(flags.get("due_max")),
            after=bool(flags.get("after")),
        )  # fmt: skip
        compiled = repository._page_statement(shape).compile(dialect=dialect)
        literals = {n: repr(b.effective_value) for n, b in compiled.binds.items() if not b.required}
        params = [{**literals, **values}[n] for n in compiled.positiontup or []]
        plans[name] = explain(database_url, str(compiled), params)
    return plans


def format_plans(plans: dict[str, Any]) -> str:
    lines = [f"-- listing SQL ({plans['source']}; parameters {', '.join(plans['parameters'])}):", plans["sql"], ""]
    for name, plan in plans["plans"].items():
        lines += [f"-- EXPLAIN (ANALYZE, BUFFERS), {name}:", plan, ""]
    return "\n".join(lines)


# --- command line ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--big", type=int, default=100_000, help="tasks of the big owner (default 100,000)")
    p.add_argument("--small", type=int, default=10, help="tasks of the small owner (default 10)")
    p.add_argument("--deep-pages", default="1000,4000", help="pages of the big owner to measure (default 1000,4000)")
    p.add_argument("--runs", type=int, default=3, help="runs per case and owner; medians are reported (default 3)")
    p.add_argument("--duration", type=int, default=4, help="seconds per wrk run (default 4)")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=20261126, help="of the generated data (default 20261126)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--port", type=int, default=8310)
    p.add_argument("--database", default="todo_bench_scale", help="dropped and re-created (default todo_bench_scale)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    p.add_argument(
        "--load-only",
        action="store_true",
        help="load, print the SQL and its plans, stop the server, keep the database (for EXPLAIN by hand); no wrk",
    )
    p.add_argument("--todo-api-bin", default=str(REPO_DIR / ".venv" / "bin" / "todo-api"))
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG", help="extra `todo-api serve` argument")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"))
    p.add_argument("--json-out", type=Path, help="report file (default bench/results/scale-<timestamp>.json)")
    return p.parse_args(argv)


def drop_database(pg_url: str, name: str) -> None:
    parts = urlsplit(pg_url)
    conn = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    env = {**os.environ, **({"PGPASSWORD": parts.password} if parts.password else {})}
    run_tool(["dropdb", *conn, "--if-exists", "--force", name], env)
    log(f"dropped database {name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        require_wrk()
        if shutil.which(args.todo_api_bin) is None:
            raise BenchError(f"no todo-api executable at {args.todo_api_bin}")
        rng = random.Random(args.seed)  # noqa: S311 -- test data
        owners = plan_owners(args.users, args.tasks, args.big, args.small, rng)
        with ExitStack() as stack:
            database_url = fresh_database(args.pg_url, args.database)
            if not (args.keep_db or args.load_only):
                stack.callback(drop_database, args.pg_url, args.database)
            secret = os.environ.get("BETTER_AUTH_SECRET", "")
            if len(secret) < 32:
                secret = uuid.uuid4().hex + uuid.uuid4().hex
            env = server_env({"DATABASE_URL": database_url, "BETTER_AUTH_SECRET": secret, **NO_THROTTLING})
            run_tool([args.todo_api_bin, "migrate"], env)
            log(f"loading {args.tasks:,} tasks over {args.users:,} owners into {args.database}")
            load_seconds = load(database_url, owners, rng)
            url = f"http://127.0.0.1:{args.port}"
            cmd = [args.todo_api_bin, "serve", "--host", "127.0.0.1", "--port", str(args.port)]
            cmd += ["--workers", str(args.workers), *args.serve_arg]
            pid = stack.enter_context(managed_server("todo-api-scale", cmd, env, url))
            tokens = {o.id: mint(secret, o.id) for o in owners[:2]}
            check_server(url, owners, tokens)
            plans = capture_plans(database_url, url, owners, tokens)
            plans["plans"].update(feature_plans(database_url, owners[0]))
            print(format_plans(plans), flush=True)
            if args.load_only:
                log(f"--load-only: database {args.database} kept ({database_url}); drop it with dropdb when done")
                return 0
            todo = run_cases(url, pid, args.database, database_url, owners, tokens, args)
    except BenchError as exc:
        log(f"bench-scale: {exc}")
        return 2
    report = build_report(todo, owners, args)
    report["meta"] = {
        "started": started,
        "seconds": round(time.monotonic() - began, 1),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        **{k: v for k, v in vars(args).items() if k not in {"json_out"}},
        "load_seconds": load_seconds,
        "owners": {o.label: {"id": o.id, "tasks": o.count} for o in owners[:2]},
    }
    report["plans"] = plans
    print(format_report(report))
    out = args.json_out or RESULTS_DIR / f"scale-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str))
    log(f"report written to {out} ({report['meta']['seconds']} s)")
    bad = [name for name, e in report["cases"].items() for w in ("small", "big") if w in e and e[w]["median"]["errors"]]
    if bad:
        log(f"WARNING errors in {', '.join(bad)}: those numbers are not to be trusted")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
