"""Real services the reliability tests (and CI) start for themselves: a private PostgreSQL cluster and PgBouncer.

Both run as the `postgres` user when we are root (initdb and pgbouncer refuse to run as root), from a temporary
directory that user owns, on a free port, so stopping, freezing or pausing them harms nobody else.

As a command (what `make pgbouncer` and `.ci/run` use):

    python -m tests.reliability.services pgbouncer start --dir DIR [--port P] [--upstream 127.0.0.1:5432]
    python -m tests.reliability.services pgbouncer stop --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVICE_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_bin() -> Path | None:
    """The directory of initdb and pg_ctl (Debian keeps them off PATH), or None when PostgreSQL is not installed."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists():
            return directory
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def pgbouncer_bin() -> str | None:
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


def _as_service_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVICE_USER, "--", *command]
    return command


def _service_dir(prefix: str, parent: Path | None = None) -> Path:
    """A fresh directory the service user owns (pytest's own temporary directories are private to root)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if os.geteuid() == 0:
        shutil.chown(directory, SERVICE_USER, SERVICE_USER)
    return directory


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)


def _wait_for_port(port: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {seconds} s")


def _children(pid: int) -> list[int]:
    """The direct children of pid, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


class PrivatePostgres:
    """A PostgreSQL cluster of our own: initdb on a temporary data directory, pg_ctl on a free port."""

    def __init__(self, parent: Path | None = None, port: int | None = None) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed")
        self.bin = bindir
        self.port = port or free_port()
        self.directory = _service_dir("todo-pg-", parent)
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"

    def _run(self, *command: str, timeout: float = 60) -> None:
        result = subprocess.run(
            _as_service_user(list(command)), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr or result.stdout}")

    def init(self) -> PrivatePostgres:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
                "shared_buffers = 32MB\n"
            )
        return self

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: the database hangs instead of refusing (like a stalled host).

        The kernel still completes TCP handshakes into the listen backlog, so connecting seems to work and then
        nothing answers."""
        postmaster = self.postmaster_pid()
        os.kill(postmaster, signal.SIGSTOP)
        for child in _children(postmaster):
            os.kill(child, signal.SIGSTOP)

    def thaw(self) -> None:
        postmaster = self.postmaster_pid()
        for child in _children(postmaster):
            os.kill(child, signal.SIGCONT)
        os.kill(postmaster, signal.SIGCONT)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-qc",
                  f'CREATE DATABASE "{name}"')  # fmt: skip
        return self.url(name)

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(OSError, ValueError):
                self.thaw()
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


class PgBouncer:
    """PgBouncer in transaction pool mode (what Neon's `-pooler` hosts run) in front of one PostgreSQL server.

    Debian 12's pgbouncer is 1.18: it has no `max_prepared_statements` (1.21+), so clients must not rely on
    prepared statements outliving a transaction. asyncpg sends no startup parameter that 1.18 rejects, so
    `ignore_startup_parameters` only lists `extra_float_digits`, which libpq-based tools send."""

    def __init__(
        self,
        upstream_host: str = "127.0.0.1",
        upstream_port: int = 5432,
        *,
        port: int | None = None,
        directory: Path | None = None,
        pool_size: int = 10,
        query_wait_timeout: int = 120,
    ) -> None:
        binary = pgbouncer_bin()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install -y pgbouncer)")
        self.binary = binary
        self.port = port or free_port()
        if directory is None:
            self.directory = _service_dir("todo-pgbouncer-")
        else:
            directory.mkdir(parents=True, exist_ok=True)
            _chown(directory)
            self.directory = directory
        self.config = self.directory / "pgbouncer.ini"
        self.pidfile = self.directory / "pgbouncer.pid"
        self.log = self.directory / "pgbouncer.log"
        self.upstream = (upstream_host, upstream_port)
        self.pool_size = pool_size
        self.query_wait_timeout = query_wait_timeout

    def write_config(self) -> None:
        users = self.directory / "userlist.txt"
        users.write_text('"postgres" ""\n')
        host, port = self.upstream
        self.config.write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"query_wait_timeout = {self.query_wait_timeout}\n"
            "server_connect_timeout = 5\n"
            "server_login_retry = 1\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.pidfile}\n"
        )
        for path in (users, self.config):
            _chown(path)

    def start(self) -> PgBouncer:
        self.write_config()
        result = subprocess.run(
            _as_service_user([self.binary, "-d", str(self.config)]),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pgbouncer did not start ({result.returncode}): {result.stderr}{log}")
        _wait_for_port(self.port, 15, "pgbouncer")
        return self

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def admin(self, command: str) -> str:
        """Run a command on PgBouncer's admin console (PAUSE, RESUME, SHOW POOLS, …)."""
        psql = shutil.which("psql") or str((postgres_bin() or Path("/usr/bin")) / "psql")
        result = subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "pgbouncer", "-Atc", command],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pgbouncer {command}: {result.stderr}")
        return result.stdout

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?pgbouncer=true"

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)  # immediate shutdown
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.services")
    services = parser.add_subparsers(dest="service", required=True)
    bouncer = services.add_parser("pgbouncer", help="PgBouncer in transaction pool mode")
    bouncer.add_argument("action", choices=("start", "stop"))
    bouncer.add_argument("--dir", type=Path, required=True, help="its config, pid file and log")
    bouncer.add_argument("--port", type=int, default=6432)
    bouncer.add_argument("--upstream", default="127.0.0.1:5432", help="host:port of PostgreSQL")
    bouncer.add_argument("--pool-size", type=int, default=10, help="server connections per database and user")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    pgbouncer = PgBouncer(host, int(port), port=args.port, directory=args.dir.resolve(), pool_size=args.pool_size)
    if args.action == "start":
        try:
            pgbouncer.start()
        except RuntimeError as error:
            sys.exit(f"pgbouncer: {error}")
        print(f"pgbouncer {args.upstream} -> 127.0.0.1:{pgbouncer.port} (transaction pooling), pid {pgbouncer.pid()}")
    else:
        pgbouncer.stop()


if __name__ == "__main__":
    _main()
