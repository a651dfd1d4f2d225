"""Benchmark harness for todo-api: seed users and tasks through the API, drive wrk, report.

    python bench/run.py --target http://127.0.0.1:8000 [--reference http://127.0.0.1:8200] [--quick]
    python bench/run.py --start-todo-api --start-reference [--workers 2]     # what `make bench` runs

Each server is seeded through the API (U users by signup, T tasks each), then every scenario runs
--runs times; with a reference the runs alternate target, reference, target, ... so both see the same
machine load. Reported figures are medians over the runs; the ratios are target / reference.
See bench/README.md. Only the standard library, httpx and orjson are used (plus the wrk binary).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_REFERENCE_DIR = REPO_DIR.parent / "shared" / "bench"

# run order: mixed last, as its creates grow the task lists that `list` counts and pages
SCENARIOS = ("list", "get", "update", "complete", "login", "create", "mixed")
QUICK_SCENARIOS = ("list", "get", "login", "create", "mixed")
# opt-in (--scenarios login-stall, make bench-login-stall): `list` alone, then while --login-connections clients log in
LOGIN_STALL = "login-stall"
RUN_ORDER = ("list", "get", "update", "complete", "login", LOGIN_STALL, "create", "mixed")
LOGIN_LEAD = 1  # seconds the logins run before `list` starts (bcrypt's first answers take about that long)
PASSWORD = "benchpass-123"  # noqa: S105 -- the password of throwaway bench users
BENCH_ENV = {"BCRYPT_ROUNDS": "12"}  # defaults for managed servers; the environment may override them
NO_THROTTLING = {"LOGIN_RATE_LIMIT": "0", "LOGIN_IP_RATE_LIMIT": "0", "SIGNUP_RATE_LIMIT": "0"}
WRITERS = 5  # extra users that `create` writes to (see seed)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A problem that stops the benchmark, with a message meant for the person running it."""


@dataclass
class Options:
    scenarios: tuple[str, ...] = SCENARIOS
    duration: int = 4  # seconds per wrk run
    connections: int = 100
    login_connections: int = 8  # bcrypt-bound: a few connections already saturate the server
    threads: int = 1  # wrk threads
    timeout: int = 10  # wrk request timeout, seconds
    users: int = 50
    tasks: int = 50
    runs: int = 3
    target_pid: int | None = None
    reference_pid: int | None = None


@dataclass
class SeedUser:
    id: str
    name: str
    token: str
    tasks: list[str] = field(default_factory=list)


@dataclass
class Server:
    name: str
    url: str
    pid: int | None
    data_file: Path | None = None
    seed: dict[str, Any] = field(default_factory=dict)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- seeding through the API ---


def _expect(response: httpx.Response, status: int, what: str) -> Any:
    if response.status_code != status:
        hint = " (rate limited: start the server with SIGNUP_RATE_LIMIT=0)" if response.status_code == 429 else ""
        raise BenchError(f"{what}: expected {status}, got {response.status_code}{hint}: {response.text[:300]}")
    return orjson.loads(response.content)


async def seed(base_url: str, users: int, tasks: int, writers: int = WRITERS) -> dict[str, list[SeedUser]]:
    """Sign up `users` fresh users with `tasks` tasks each, and `writers` more without tasks, by the API.

    `create` adds its tasks to the writers, so the lists that later scenarios read do not grow with how fast
    a server creates. Signups run 8 at a time (bcrypt-bound on the server), task creations 32 at a time.
    """
    stamp = f"{int(time.time()):x}{secrets.token_hex(2)}"
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=120, limits=limits) as client:
        try:
            health = await client.get("/health")
        except httpx.HTTPError as exc:
            raise BenchError(f"{base_url} does not answer ({exc!r}): is the server running?") from exc
        _expect(health, 200, f"GET {base_url}/health")

        signups, creations = asyncio.Semaphore(8), asyncio.Semaphore(32)

        async def signup(i: int) -> SeedUser:
            name = f"bench_{stamp}_{i:04d}"
            body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            async with signups:
                response = await client.post("/api/auth/signup", json={**body, "confirm_password": PASSWORD})
            data = _expect(response, 201, "POST /api/auth/signup")
            return SeedUser(id=str(data["user"]["id"]), name=name, token=str(data["access_token"]))

        async def add_task(user: SeedUser, j: int) -> str:
            body = {"title": f"seed task {j}", "description": f"seeded for {user.name}"}
            headers = {"Authorization": f"Bearer {user.token}"}
            async with creations:
                response = await client.post(f"/api/{quote(user.id, safe='')}/tasks", json=body, headers=headers)
            return str(_expect(response, 201, "POST /api/{user_id}/tasks")["id"])

        async def add_tasks(user: SeedUser) -> None:
            user.tasks = list(await asyncio.gather(*(add_task(user, j) for j in range(tasks))))

        created = list(await asyncio.gather(*(signup(i) for i in range(users + writers))))
        await asyncio.gather(*(add_tasks(user) for user in created[:users]))
    return {"users": created[:users], "writers": created[users:]}


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_lua_data(path: Path, base_url: str, seeded: dict[str, list[SeedUser]], list_query: str = "") -> None:
    """The table bench/lua/common.lua loads in init(): user ids (path-encoded), names, tokens, task ids, and
    the query string of `list` requests (e.g. "?sort_by=title&page=2"; bench/scale.py uses it)."""
    lines = [
        "return {",
        f"  prefix = {_lua_string(urlsplit(base_url).path.rstrip('/'))},",
        f"  password = {_lua_string(PASSWORD)},",
        f"  list_query = {_lua_string(list_query)},",
    ]
    for group, users in seeded.items():
        lines.append(f"  {group} = {{")
        for u in users:
            task_ids = ", ".join(_lua_string(t) for t in u.tasks)
            lines.append(
                f"    {{ id = {_lua_string(quote(u.id, safe=''))}, name = {_lua_string(u.name)}, "
                f"token = {_lua_string(u.token)}, tasks = {{ {task_ids} }} }},"
            )
        lines.append("  },")
    path.write_text("\n".join([*lines, "}", ""]))


# --- server CPU and memory from /proc ---


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (uvicorn workers and whatever they start)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid and its live descendants (plus children already reaped)."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLK_TCK


def peak_rss_mib(pid: int) -> list[float]:
    """VmHWM (peak resident memory) of each worker: each child of pid, or pid itself if it has none."""
    tree = process_tree(pid)
    return [peak for p in tree[1:] or tree if (peak := status_mib(p, "VmHWM")) is not None]


def status_mib(pid: int, field: str) -> float | None:
    """A memory field of /proc/<pid>/status (VmHWM, VmRSS, ...) in MiB; None when the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


_busy_warned: set[int] = set()


def settle(pid: int, limit: float = 3) -> None:
    """Wait (at most `limit` s) until the server is idle: done with what a wrk run left in flight."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_seconds(pid)
        if now - before <= 0.02:  # under 10% of a core: idle
            return
        before = now
    if pid not in _busy_warned:
        _busy_warned.add(pid)
        log(f"warning: server pid {pid} is never idle; its CPU figures include background work")


# --- wrk ---


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not on PATH: install it (Debian/Ubuntu: `apt-get install -y wrk`) and retry")
    return wrk


def wrk_command(
    server: Server, scenario: str, connections: int, offset: int, opts: Options, duration: int | None = None
) -> list[str]:
    assert server.data_file is not None
    return [
        require_wrk(),
        f"-t{opts.threads}",
        f"-c{connections}",
        f"-d{duration or opts.duration}s",
        f"--timeout={opts.timeout}s",
        "-s",
        str(LUA_DIR / f"{scenario}.lua"),
        server.url,
        "--",
        str(server.data_file),
        str(offset),
    ]


def wrk_result(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = orjson.loads(line.removeprefix("BENCH_RESULT "))
            return result
    raise BenchError(f"wrk gave no result (exit {returncode}): {stderr.strip() or stdout.strip()}")


def run_wrk(server: Server, scenario: str, connections: int, offset: int, opts: Options) -> dict[str, Any]:
    cmd = wrk_command(server, scenario, connections, offset, opts)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.duration + 60, check=False)  # noqa: S603
    return wrk_result(proc.returncode, proc.stdout, proc.stderr)


@contextmanager
def logins_in_background(server: Server, opts: Options, results: list[dict[str, Any]]) -> Iterator[None]:
    """Run the `login` scenario (opts.login_connections clients) around the body, LOGIN_LEAD s ahead of it;
    its wrk result is appended to `results` once it finishes (it runs opts.duration + 2 x LOGIN_LEAD s)."""
    duration = opts.duration + 2 * LOGIN_LEAD
    cmd = wrk_command(server, "login", opts.login_connections, 0, opts, duration)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
    try:
        time.sleep(LOGIN_LEAD)
        yield
        stdout, stderr = proc.communicate(timeout=duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    results.append(wrk_result(proc.returncode, stdout, stderr))


def measure(
    server: Server, scenario: str, offset: int, opts: Options, logins: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One wrk run of one scenario against one server, with the server's CPU time around it.

    The CPU time is taken from an idle server to an idle server again, so it includes the requests wrk
    left in flight when it stopped: one per connection, counted with the completed ones. With `logins` (a
    list), the login scenario runs alongside (see logins_in_background) and its result is appended there;
    the CPU per request then includes the logins' bcrypt, so it is not reported.
    """
    connections = opts.login_connections if scenario == "login" else opts.connections
    cpu_before = cpu_after = 0.0
    if server.pid:
        settle(server.pid)
        cpu_before = cpu_seconds(server.pid)
    else:
        time.sleep(0.5)  # let the previous run's stragglers finish
    if logins is None:
        raw = run_wrk(server, scenario, connections, offset, opts)
    else:
        with logins_in_background(server, opts, logins):
            raw = run_wrk(server, scenario, connections, offset, opts)
    if server.pid:
        settle(server.pid, 3 if logins is None else 10)  # up to 8 queued bcrypt hashes may still be running
        cpu_after = cpu_seconds(server.pid)
    requests = int(raw["requests"])
    lat = raw["latency_us"]
    errors = {k: int(v) for k, v in raw["errors"].items() if k != "status"}
    run: dict[str, Any] = {
        "requests": requests,
        "rps": round(requests / (raw["duration_us"] / 1e6), 1),
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": round(lat["mean"] / 1000, 3),
        "non2xx": int(raw["non2xx"]),
        "socket_errors": errors,
        "first_non2xx": raw["sample"],
        "cpu_ms_per_req": None,
        "peak_rss_mib": None,
    }
    if server.pid and requests:
        cpu_ms = round((cpu_after - cpu_before) * 1000 / (requests + connections), 3)
        run["cpu_ms_per_req" if logins is None else "cpu_ms_per_req_with_logins"] = cpu_ms
        run["rss_mib_per_worker"] = peak_rss_mib(server.pid)
        run["peak_rss_mib"] = max(run["rss_mib_per_worker"], default=None)
    return run


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs (sums for error counts, the maximum for peak memory)."""

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    rss = [r["peak_rss_mib"] for r in runs if r["peak_rss_mib"] is not None]
    return {
        **{k: median(k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_ms_per_req")},
        "peak_rss_mib": max(rss) if rss else None,
        "requests": sum(r["requests"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "socket_errors": sum(sum(r["socket_errors"].values()) for r in runs),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run_benchmark(target_url: str, reference_url: str | None = None, options: Options | None = None) -> dict[str, Any]:
    """Seed each server, run every scenario --runs times (servers interleaved), return the report."""
    opts = options or Options()
    require_wrk()
    unknown = set(opts.scenarios) - set(RUN_ORDER)
    if unknown:
        raise BenchError(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(RUN_ORDER)}")
    scenarios = [s for s in RUN_ORDER if s in opts.scenarios]
    servers = [Server("target", target_url.rstrip("/"), opts.target_pid)]
    if reference_url:
        servers.append(Server("reference", reference_url.rstrip("/"), opts.reference_pid))
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "options": {**asdict(opts), "scenarios": scenarios},
        "servers": {},
        "scenarios": {},
    }
    started_at = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="todo-bench-") as tmp:
        for server in servers:
            started = time.monotonic()
            seeded = asyncio.run(seed(server.url, opts.users, opts.tasks))
            server.data_file = Path(tmp) / f"{server.name}.lua"
            write_lua_data(server.data_file, server.url, seeded)
            server.seed = {
                "users": opts.users,
                "tasks_per_user": opts.tasks,
                "writers": len(seeded["writers"]),
                "seconds": round(time.monotonic() - started, 1),
            }
            log(
                f"seeded {server.name} {server.url}: {opts.users} users x {opts.tasks} tasks "
                f"in {server.seed['seconds']} s"
            )
            report["servers"][server.name] = {"url": server.url, "pid": server.pid, "seed": server.seed}

        for scenario in scenarios:
            if scenario == LOGIN_STALL:
                run_login_stall(servers, opts, report)
                continue
            runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for i in range(opts.runs):
                for server in servers:
                    offset = sum(r["requests"] for r in runs[server.name])
                    run = measure(server, scenario, offset, opts)
                    runs[server.name].append(run)
                    _log_run(scenario, i, server, run, opts)
            report["scenarios"][scenario] = _entry(runs)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["seconds"] = round(time.monotonic() - started_at, 1)
    return report


def _log_run(label: str, i: int, server: Server, run: dict[str, Any], opts: Options) -> None:
    log(
        f"  {label:<10} run {i + 1}/{opts.runs} {server.name:<9} {run['rps']:>9.1f} req/s  "
        f"p99 {run['p99_ms']:8.2f} ms  non-2xx {run['non2xx']}"
    )


def _entry(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per server, and the ratios target / reference when there is a reference."""
    entry: dict[str, Any] = {name: {"median": summarise(r), "runs": r} for name, r in runs.items()}
    if "reference" in entry:
        t, ref = entry["target"]["median"], entry["reference"]["median"]
        entry["ratio"] = {
            "rps": _ratio(t["rps"], ref["rps"]),
            "p99": _ratio(t["p99_ms"], ref["p99_ms"]),
            "cpu_ms_per_req": _ratio(t["cpu_ms_per_req"], ref["cpu_ms_per_req"]),
        }
    return entry


def run_login_stall(servers: list[Server], opts: Options, report: dict[str, Any]) -> None:
    """Do logins stall other work? Each run measures `list` alone, then `list` again while
    opts.login_connections clients log in continuously (bcrypt on the server); servers interleaved.

    Adds the scenarios `list-solo` and `list+login` to the report, and under "login_stall" per server the
    medians of both p99s, their ratio (the issue's target: at most 3) and the background logins' own results.
    """
    solo: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    loaded: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    logins: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    for i in range(opts.runs):
        for server in servers:
            for label, runs, background in (("list-solo", solo, None), ("list+login", loaded, logins[server.name])):
                offset = sum(r["requests"] for r in solo[server.name] + loaded[server.name])
                run = measure(server, "list", offset, opts, logins=background)
                runs[server.name].append(run)
                _log_run(label, i, server, run, opts)
            login = logins[server.name][-1]
            log(f"  {'(logins)':<10}            {login['requests'] / (login['duration_us'] / 1e6):>9.1f} req/s")
    report["scenarios"]["list-solo"] = _entry(solo)
    report["scenarios"]["list+login"] = _entry(loaded)
    stall: dict[str, Any] = {}
    for server in servers:
        alone = report["scenarios"]["list-solo"][server.name]["median"]["p99_ms"]
        with_logins = report["scenarios"]["list+login"][server.name]["median"]["p99_ms"]
        login_runs = [
            {
                "requests": int(raw["requests"]),
                "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                "p50_ms": raw["latency_us"]["p50"] / 1000,
                "p99_ms": raw["latency_us"]["p99"] / 1000,
                "non2xx": int(raw["non2xx"]),
                "first_non2xx": raw["sample"],
            }
            for raw in logins[server.name]
        ]
        stall[server.name] = {
            "list_p99_alone_ms": alone,
            "list_p99_with_logins_ms": with_logins,
            "ratio": _ratio(with_logins, alone),
            "login_clients": opts.login_connections,
            "login_rps": statistics.median(r["rps"] for r in login_runs),
            "login_runs": login_runs,
        }
    report["login_stall"] = stall


# --- output ---


# (heading, width, key of a median, decimals)
COLUMNS = (
    ("req/s", 9, "rps", 1),
    ("p50 ms", 8, "p50_ms", 2),
    ("p90 ms", 8, "p90_ms", 2),
    ("p99 ms", 8, "p99_ms", 2),
    ("max ms", 8, "max_ms", 1),
    ("errors", 7, "errors", 0),
    ("cpu ms/req", 10, "cpu_ms_per_req", 3),
    ("rss MiB", 8, "peak_rss_mib", 1),
)


def _row(scenario: str, server: str, values: dict[str, Any], decimals: int | None = None) -> str:
    cells = []
    for _, width, key, digits in COLUMNS:
        value = values.get(key, "")
        if value is None:
            value = "-"
        elif not isinstance(value, str):
            value = f"{value:.{digits if decimals is None else decimals}f}"
        cells.append(f"{value:>{width}}")
    return f"{scenario:<10} {server:<10} {' '.join(cells)}".rstrip()


def format_table(report: dict[str, Any]) -> str:
    opts = report["options"]
    lines = [
        f"todo-api benchmark {report['started']}: medians of {opts['runs']} run(s) x {opts['duration']} s, "
        f"wrk -t{opts['threads']} -c{opts['connections']} (login -c{opts['login_connections']}), "
        f"{opts['users']} users x {opts['tasks']} tasks",
        *(
            f"  {name}: {s['url']}" + (f" (pid {s['pid']})" if s["pid"] else "")
            for name, s in report["servers"].items()
        ),
        "",
        _row("scenario", "server", {key: heading for heading, _, key, _ in COLUMNS}),
    ]
    for scenario, entry in report["scenarios"].items():
        for name in ("target", "reference"):
            if name in entry:
                m = entry[name]["median"]
                label = scenario if name == "target" else ""
                lines.append(_row(label, name, {**m, "errors": m["non2xx"] + m["socket_errors"]}))
        if "ratio" in entry:
            r = entry["ratio"]
            ratios = {"rps": r["rps"], "p99_ms": r["p99"], "cpu_ms_per_req": r["cpu_ms_per_req"]}
            lines.append(_row("", "t/r", ratios, decimals=2))
    for name, stall in report.get("login_stall", {}).items():
        alone, loaded, ratio = stall["list_p99_alone_ms"], stall["list_p99_with_logins_ms"], stall["ratio"]
        lines.append(
            f"login stall, {name}: list p99 {alone:.2f} ms alone, {loaded:.2f} ms with {stall['login_clients']} "
            f"clients logging in ({stall['login_rps']:.1f} logins/s): {ratio:.2f}x (target <= 3x)"
        )
    lines += [
        "",
        "errors: non-2xx responses, socket errors and timeouts, summed over the runs; cpu: server CPU time "
        "(all its processes) per request; rss: peak resident memory of the largest worker; "
        "t/r = target / reference (req/s: higher is better for the target; p99 and cpu: lower is better)",
    ]
    return "\n".join(lines)


def problems(report: dict[str, Any]) -> list[str]:
    found = []
    for scenario, entry in report["scenarios"].items():
        for name in ("target", "reference"):
            for run in entry.get(name, {}).get("runs", []):
                if run["non2xx"]:
                    found.append(f"{scenario} on {name}: {run['non2xx']} non-2xx, first: {run['first_non2xx']}")
                    break
    for name, stall in report.get("login_stall", {}).items():
        for run in stall["login_runs"]:
            if run["non2xx"]:
                found.append(f"background logins on {name}: {run['non2xx']} non-2xx, first: {run['first_non2xx']}")
                break
    return found


# --- servers started by the harness (make bench) ---


def run_tool(cmd: list[str], env: dict[str, str]) -> None:
    """Run a set-up command quietly; on failure stop with its output."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def fresh_database(pg_url: str, name: str) -> str:
    """Drop and re-create database `name` on the server of pg_url; return its URL."""
    parts = urlsplit(pg_url)
    conn = [
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 5432),
        "-U",
        parts.username or "postgres",
    ]
    env = {**os.environ, **({"PGPASSWORD": parts.password} if parts.password else {})}
    for tool in ("dropdb", "createdb"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not on PATH (Debian: apt-get install -y postgresql-client)")
    run_tool(["dropdb", *conn, "--if-exists", "--force", name], env)
    run_tool(["createdb", *conn, name], env)
    return f"{parts.scheme}://{parts.netloc}/{name}"


@contextmanager
def managed_server(name: str, cmd: list[str], env: dict[str, str], url: str) -> Iterator[int]:
    """Start a server in its own process group, wait for GET /health, yield its pid, stop it after."""
    RESULTS_DIR.mkdir(exist_ok=True)
    log_path = RESULTS_DIR / f"{name}.log"
    log(f"starting {name}: {' '.join(cmd)} (log: {log_path.relative_to(REPO_DIR)})")
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise BenchError(f"{name} exited with {proc.returncode} before answering /health:\n{tail}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} did not answer {url}/health within 60 s (see {log_path})")
                time.sleep(0.25)
            yield proc.pid
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def server_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**BENCH_ENV, **os.environ, **extra}
    if len(env.get("BETTER_AUTH_SECRET", "")) < 32:
        env["BETTER_AUTH_SECRET"] = secrets.token_urlsafe(36)
    return env


def start_todo_api(stack: ExitStack, args: argparse.Namespace) -> tuple[str, int]:
    if shutil.which(args.todo_api_bin) is None:
        raise BenchError(f"no todo-api executable at {args.todo_api_bin} (install the project, or --todo-api-bin)")
    database_url = fresh_database(args.pg_url, "todo_bench")
    env = server_env({"DATABASE_URL": database_url, **NO_THROTTLING})
    run_tool([args.todo_api_bin, "migrate"], env)
    url = f"http://127.0.0.1:{args.todo_api_port}"
    cmd = [
        args.todo_api_bin,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.todo_api_port),
        "--workers",
        str(args.workers),
        *args.serve_arg,
    ]
    return url, stack.enter_context(managed_server("todo-api", cmd, env, url))


def start_reference(stack: ExitStack, args: argparse.Namespace) -> tuple[str, int]:
    app_dir = Path(args.start_reference)
    if not (app_dir / "reference_app.py").is_file():
        raise BenchError(f"no reference_app.py in {app_dir} (pass --start-reference DIR)")
    env = server_env({"LIMIT_DATABASE_URL": fresh_database(args.pg_url, "todo_bench_reference")})
    url = f"http://127.0.0.1:{args.reference_port}"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "reference_app:app",
        "--app-dir",
        str(app_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.reference_port),
        "--workers",
        str(args.workers),
        "--no-access-log",
    ]
    return url, stack.enter_context(managed_server("reference", cmd, env, url))


# --- command line ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="URL of a running todo-api (or use --start-todo-api)")
    p.add_argument("--reference", help="URL of a running yardstick server to compare with")
    p.add_argument(
        "--scenarios",
        help=f"comma-separated subset of {','.join(RUN_ORDER)} (default: all but {LOGIN_STALL})",
    )
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 4, quick 3)")
    p.add_argument("--connections", type=int, default=100, help="wrk connections (default 100)")
    p.add_argument("--login-connections", type=int, default=8, help="wrk connections for login (default 8)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--users", type=int, help="users to seed per server (default 50, quick 20)")
    p.add_argument("--tasks", type=int, help="tasks to seed per user (default 50, quick 20)")
    p.add_argument("--runs", type=int, help="runs per scenario and server; medians are reported (default 3, quick 1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"about a minute: 1 run x 3 s, 20 users x 20 tasks, scenarios {','.join(QUICK_SCENARIOS)}",
    )
    p.add_argument("--json-out", type=Path, help="report file (default bench/results/<timestamp>.json)")
    p.add_argument("--server-pid", type=int, help="pid of the target server, to sample its CPU time and memory")
    p.add_argument("--reference-pid", type=int, help="pid of the reference server, likewise")
    g = p.add_argument_group("servers started by the harness (each on a fresh database, stopped at the end)")
    g.add_argument(
        "--start-todo-api",
        action="store_true",
        help="run `todo-api migrate`, then `todo-api serve`, and benchmark it as the target",
    )
    g.add_argument(
        "--start-reference",
        nargs="?",
        const=str(DEFAULT_REFERENCE_DIR),
        metavar="DIR",
        help=f"serve DIR/reference_app.py with uvicorn as the reference (default {DEFAULT_REFERENCE_DIR})",
    )
    g.add_argument("--workers", type=int, default=1, help="workers for each started server (default 1)")
    g.add_argument("--todo-api-bin", default=str(REPO_DIR / ".venv" / "bin" / "todo-api"))
    g.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `todo-api serve`, repeatable (e.g. --serve-arg=--no-access-log)",
    )
    g.add_argument("--todo-api-port", type=int, default=8300)
    g.add_argument("--reference-port", type=int, default=8301)
    g.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server for started servers' databases todo_bench and todo_bench_reference",
    )
    args = p.parse_args(argv)
    if bool(args.target) == args.start_todo_api:
        p.error("give exactly one of --target URL and --start-todo-api")
    if args.reference and args.start_reference:
        p.error("give at most one of --reference URL and --start-reference")
    return args


def options_from(args: argparse.Namespace) -> Options:
    quick = args.quick
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip()) if args.scenarios else None
    return Options(
        scenarios=scenarios or (QUICK_SCENARIOS if quick else SCENARIOS),
        duration=args.duration or (3 if quick else 4),
        connections=args.connections,
        login_connections=args.login_connections,
        threads=args.threads,
        users=args.users or (20 if quick else 50),
        tasks=args.tasks or (20 if quick else 50),
        runs=args.runs or (1 if quick else 3),
        target_pid=args.server_pid,
        reference_pid=args.reference_pid,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = options_from(args)
    try:
        require_wrk()
        with ExitStack() as stack:
            target, reference = args.target, args.reference
            if args.start_todo_api:
                target, opts.target_pid = start_todo_api(stack, args)
            if args.start_reference:
                reference, opts.reference_pid = start_reference(stack, args)
            report = run_benchmark(target, reference, opts)
    except BenchError as exc:
        log(f"bench: {exc}")
        return 2
    print(format_table(report))
    out = args.json_out or RESULTS_DIR / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    log(f"report written to {out} ({report['seconds']} s)")
    found = problems(report)
    for problem in found:
        log(f"WARNING {problem}")
    return 3 if found else 0


if __name__ == "__main__":
    sys.exit(main())
