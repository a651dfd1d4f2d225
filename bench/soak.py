"""Soak test (`make soak`): mixed load on `todo-api serve` for a long time; do memory and connections stay flat?

    python bench/soak.py [--seconds 600] [--workers 2] [--connections 50] [--pg-url postgresql://postgres@127.0.0.1:5432]

Starts `todo-api serve --workers N` on a fresh PostgreSQL database (`todo_soak`), seeds users and tasks through the
API, then runs wrk with bench/lua/mixed.lua (list, get, create, update, complete) and, beside it, one connection
logging in over and over (bcrypt on its thread pool), for --seconds (SOAK_SECONDS in `make soak`). Every
--sample seconds it records the resident memory (VmRSS) of every server process and the number of connections
PostgreSQL has open to the database (pg_stat_activity). Prints the figures at the start and end of the load and a
verdict; the samples go to bench/results/soak-<time>.json.

Exit status: 0 when every request was answered 2xx, the open connections never exceeded the pools' bound
(workers x (DB_POOL_SIZE + DB_MAX_OVERFLOW)) and no process's memory grew by more than --max-rss-growth (default
25 %) from the end of the warm-up to the end; 1 otherwise; 2 when the soak could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from run import (
    LUA_DIR,
    NO_THROTTLING,
    RESULTS_DIR,
    BenchError,
    fresh_database,
    log,
    managed_server,
    process_tree,
    require_wrk,
    run_tool,
    seed,
    server_env,
    status_mib,
    write_lua_data,
)

DATABASE = "todo_soak"
POOL_SIZE, MAX_OVERFLOW = 10, 5  # the product's defaults, set explicitly so the bound below is known


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_mib(pid: int) -> dict[int, float]:
    """Current resident memory (VmRSS) of pid and each of its descendants, MiB."""
    return {p: rss for p in process_tree(pid) if (rss := status_mib(p, "VmRSS")) is not None}


def open_connections(pg_url: str, database: str) -> dict[str, int]:
    """Connections PostgreSQL has open to the database, by state (active, idle, idle in transaction, ...)."""
    parts = urlsplit(pg_url)
    query = (
        "SELECT coalesce(state, 'none'), count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1"
    )
    env = {**os.environ, **({"PGPASSWORD": parts.password} if parts.password else {})}
    psql = shutil.which("psql") or "psql"
    out = subprocess.run(  # noqa: S603
        [psql, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
         "-d", database, "-Atc", query],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    counts = {}
    for line in out.splitlines():
        state, _, count = line.partition("|")
        counts[state] = int(count)
    return counts


def sample(pid: int, pg_url: str, started: float) -> dict[str, Any]:
    rss = rss_mib(pid)
    connections = open_connections(pg_url, DATABASE)
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_mib": {str(p): v for p, v in rss.items()},
        "rss_total_mib": round(sum(rss.values()), 1),
        "connections": connections,
        "connections_total": sum(connections.values()),
    }


def wrk(script: str, connections: int, seconds: int, url: str, data: Path) -> subprocess.Popen[str]:
    cmd = [require_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout=10s", "-s", str(LUA_DIR / script),
           url, "--", str(data)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603


def wrk_result(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=timeout)
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = orjson.loads(line.removeprefix("BENCH_RESULT "))
            return result
    raise BenchError(f"wrk gave no result (exit {process.returncode}): {stderr.strip() or stdout.strip()}")


def describe(point: dict[str, Any]) -> str:
    per_process = ", ".join(f"{v:.1f}" for v in point["rss_mib"].values())
    states = ", ".join(f"{n} {state}" for state, n in sorted(point["connections"].items()))
    return (
        f"t={point['t']:>6.1f} s  RSS {point['rss_total_mib']:7.1f} MiB ({per_process})  "
        f"database connections {point['connections_total']:>3} ({states or 'none'})"
    )


def soak(args: argparse.Namespace) -> int:
    require_wrk()
    if shutil.which(args.todo_api_bin) is None:
        raise BenchError(f"no todo-api executable at {args.todo_api_bin}")
    bound = args.workers * (POOL_SIZE + MAX_OVERFLOW)
    with ExitStack() as stack:
        database_url = fresh_database(args.pg_url, DATABASE)
        env = server_env(
            {
                "DATABASE_URL": database_url,
                "DB_POOL_SIZE": str(POOL_SIZE),
                "DB_MAX_OVERFLOW": str(MAX_OVERFLOW),
                **NO_THROTTLING,
            }
        )
        run_tool([args.todo_api_bin, "migrate"], env)
        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [args.todo_api_bin, "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(args.workers), "--no-access-log"]  # fmt: skip
        pid = stack.enter_context(managed_server("todo-api-soak", cmd, env, url))
        time.sleep(1)
        if not alive(pid):
            raise BenchError(f"the server we started is not running: is {url} taken by another process?")
        seeded = asyncio.run(seed(url, args.users, args.tasks))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="todo-soak-")))
        data = tmp / "data.lua"
        write_lua_data(data, url, seeded)
        log(f"seeded {args.users} users x {args.tasks} tasks; soaking for {args.seconds} s")

        started = time.monotonic()
        samples = [{**sample(pid, args.pg_url, started), "phase": "idle before"}]
        log(f"idle before  {describe(samples[0])}")
        mixed = wrk("mixed.lua", args.connections, args.seconds, url, data)
        logins = wrk("login.lua", 1, args.seconds, url, data)
        stop = threading.Event()

        def sampler() -> None:
            while not stop.wait(args.sample):
                point = {**sample(pid, args.pg_url, started), "phase": "load"}
                samples.append(point)
                log(f"load         {describe(point)}")

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        try:
            mixed_result = wrk_result(mixed, args.seconds + 120)
            login_result = wrk_result(logins, 120)
        finally:
            stop.set()
            thread.join()
            for process in (mixed, logins):
                if process.poll() is None:
                    process.kill()
        time.sleep(2)
        samples.append({**sample(pid, args.pg_url, started), "phase": "idle after"})
        log(f"idle after   {describe(samples[-1])}")

    load = [s for s in samples if s["phase"] == "load"]
    if len(load) < 2:
        raise BenchError(f"too few samples under load: make --seconds larger than 2 x --sample ({args.sample} s)")
    warm_index = max(0, min(len(load) - 2, int(len(load) * 0.1)))  # the first 10 % is warm-up
    start, end = load[warm_index], load[-1]
    peak_connections = max(s["connections_total"] for s in samples)
    growth = {
        p: (end["rss_mib"][p] - start["rss_mib"][p]) / start["rss_mib"][p]
        for p in start["rss_mib"]
        if p in end["rss_mib"] and start["rss_mib"][p] > 0
    }
    worst_growth = max(growth.values(), default=0.0)
    errors = {
        name: int(result["non2xx"]) + sum(int(v) for k, v in result["errors"].items() if k != "status")
        for name, result in (("mixed", mixed_result), ("login", login_result))
    }
    report = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "workers": args.workers,
        "connections_bound": bound,
        "mixed": mixed_result,
        "login": login_result,
        "samples": samples,
        "start": start,
        "end": end,
        "rss_growth": growth,
        "peak_connections": peak_connections,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"soak-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))

    rps = mixed_result["requests"] / (mixed_result["duration_us"] / 1e6)
    print(f"soak: {args.seconds} s, {args.workers} workers, wrk -c{args.connections} mixed.lua + 1 login connection")
    print(f"  requests: {mixed_result['requests']} mixed ({rps:.0f}/s), {login_result['requests']} logins; "
          f"non-2xx or socket errors: {errors['mixed']} mixed, {errors['login']} login")  # fmt: skip
    print(f"  start (t={start['t']:.0f} s): RSS {start['rss_total_mib']:.1f} MiB, "
          f"{start['connections_total']} database connections")  # fmt: skip
    print(f"  end   (t={end['t']:.0f} s): RSS {end['rss_total_mib']:.1f} MiB, "
          f"{end['connections_total']} database connections")  # fmt: skip
    print(f"  idle before/after: RSS {samples[0]['rss_total_mib']:.1f} / {samples[-1]['rss_total_mib']:.1f} MiB, "
          f"connections {samples[0]['connections_total']} / {samples[-1]['connections_total']}")  # fmt: skip
    print(f"  largest growth of one process's RSS from start to end: {worst_growth:+.1%}; "
          f"peak connections {peak_connections} (bound {bound})")  # fmt: skip
    print(f"  samples: {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    failures = []
    if any(errors.values()):
        failures.append(f"errors: {errors}; first: {mixed_result['sample'] or login_result['sample']}")
    if peak_connections > bound:
        failures.append(f"{peak_connections} database connections, over the bound of {bound}")
    if worst_growth > args.max_rss_growth:
        failures.append(f"a server process's memory grew by {worst_growth:.1%}")
    for failure in failures:
        print(f"soak: FAIL: {failure}")
    if not failures:
        print("soak: OK: memory and database connections stayed flat")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "600")))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--connections", type=int, default=50, help="wrk connections for the mixed load")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--max-rss-growth", type=float, default=0.25, help="fraction; above it the soak fails")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--todo-api-bin", default=str(Path(sys.executable).with_name("todo-api")))
    args = p.parse_args(argv)
    try:
        return soak(args)
    except BenchError as error:
        print(f"soak: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
