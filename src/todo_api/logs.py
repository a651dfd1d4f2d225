"""Logging: one line per record, each tagged with the request id; nothing that logs secrets is let through."""

from __future__ import annotations

import logging.config
import time

from todo_api.middleware import RequestIdFilter

LINE_FORMAT = "%(asctime)sZ %(levelname)s %(name)s [%(request_id)s] %(message)s"


class _UtcFormatter(logging.Formatter):
    """Times in UTC, like everything else this API says. Also half the cost of a record (the access log writes
    one per request): without TZ set, glibc's localtime() looks at /etc/localtime every time."""

    converter = staticmethod(time.gmtime)


def configure_logging(level: str) -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"request_id": {"()": RequestIdFilter}},
            "formatters": {
                "line": {"()": _UtcFormatter, "fmt": LINE_FORMAT},
            },
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "line", "filters": ["request_id"]},
            },
            "root": {"level": level, "handlers": ["stderr"]},
            "loggers": {
                "uvicorn.access": {"level": level},
                "uvicorn.error": {"level": level},
                # These log SQL parameters (password hashes among them) at DEBUG: never below WARNING.
                **{
                    name: {"level": "WARNING"}
                    for name in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg")
                },
            },
        }
    )
