"""`todo-api serve | migrate | relay | openapi`: the commands an operator runs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile

import uvicorn
from pydantic import ValidationError

from todo_api.config import ConfigError, Settings, get_settings

# Keep this module's imports light: every `--workers` process re-imports it (multiprocessing's spawn) before it can
# answer uvicorn's 5-second health ping, and on a busy machine importing the app stack first got new workers killed
# and restarted in a loop. The app itself is imported after the ping thread is up.


def _settings_or_exit(*, serving: bool, relaying: bool = False, workers: int = 1) -> Settings:
    """Settings that are safe to start with, or exit with a one-line reason."""
    from todo_api.observability.logs import configure_logging

    try:
        settings = get_settings()
        configure_logging(settings.log_level, settings.log_format)
        if serving:
            settings.signing_secret()
            settings.check_serving()
            for warning in settings.production_warnings(workers):
                logging.getLogger("todo_api").warning("%s", warning)
        if relaying or (serving and settings.events_relay == "inline" and settings.events_publisher != "none"):
            from todo_api.events.relay import relay_engine

            relay_engine(settings)  # raises ConfigError for a database the relay cannot lead on
    except ValidationError as error:
        first = error.errors()[0]
        name = ".".join(str(part) for part in first["loc"]).upper()
        if not name:  # a rule between settings: its message names them
            sys.exit(f"todo-api: invalid settings: {first['msg'].removeprefix('Value error, ')}")
        sys.exit(f"todo-api: invalid setting {name}: {first['msg']}")
    except ConfigError as error:
        sys.exit(f"todo-api: {error}")
    return settings


def _exit_cleanly(signum: int, _frame: object) -> None:
    sys.exit(0)


def serve(args: argparse.Namespace) -> None:
    # Before anything imports prometheus_client (it picks its storage then) or reads the settings: the workers
    # inherit both. Their metrics files live in a directory of the server's own, gone when it stops.
    metrics_dir = tempfile.mkdtemp(prefix="todo-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if not args.access_log:
        os.environ["ACCESS_LOG"] = "false"
    try:
        _serve(args)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(args: argparse.Namespace) -> None:
    from todo_api.server import BoundedHttpToolsProtocol

    _settings_or_exit(serving=True, workers=args.workers)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to whatever handler was there
    # before it: make that one a clean exit, so orchestrators see status 0 after a graceful stop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    uvicorn.run(
        "todo_api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        log_config=None,
        access_log=False,  # the app writes its own access line (todo_api.access), with the route and duration
        proxy_headers=False,  # TRUSTED_PROXIES decides whom to believe, not uvicorn
        timeout_graceful_shutdown=args.graceful_timeout,
    )


def migrate(_: argparse.Namespace) -> None:
    from todo_api.migrate import upgrade

    settings = _settings_or_exit(serving=False)
    asyncio.run(upgrade(settings.migration_url))


def relay(_: argparse.Namespace) -> None:
    from todo_api.events.relay import serve_relay

    settings = _settings_or_exit(serving=False, relaying=True)
    if settings.events_publisher == "none":
        sys.exit("todo-api: EVENTS_PUBLISHER is none, so there is nothing to relay (set log, dapr, redis or kafka)")
    asyncio.run(serve_relay(settings))


def openapi(args: argparse.Namespace) -> None:
    """The OpenAPI document as JSON, without starting a server or touching a database (what `make client` feeds
    to openapi-typescript)."""
    import json

    from todo_api.main import openapi_document

    text = json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-api", description="The todo-api service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the API with uvicorn")
    serve_cmd.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve_cmd.add_argument("--workers", type=int, default=1)
    serve_cmd.add_argument("--graceful-timeout", type=int, default=20, help="seconds to finish in-flight requests")
    serve_cmd.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    serve_cmd.set_defaults(run=serve)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=migrate)
    commands.add_parser("relay", help="publish the event outbox (EVENTS_PUBLISHER)").set_defaults(run=relay)
    openapi_cmd = commands.add_parser("openapi", help="write the OpenAPI document (no server, no database)")
    openapi_cmd.add_argument("--output", "-o", help="file to write (default: standard output)")
    openapi_cmd.set_defaults(run=openapi)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    logging.captureWarnings(True)
    main()
