"""Logging: one line per record, each tagged with the request id; nothing that logs secrets is let through."""

from __future__ import annotations

import logging.config
import time
from typing import Any

from todo_api.middleware import request_id_var

LINE_FORMAT = "%(asctime)sZ %(levelname)s %(name)s [%(request_id)s] %(message)s"


class _UtcFormatter(logging.Formatter):
    """Times in UTC, like everything else this API says. Also half the cost of a record (the access log writes
    one per request): without TZ set, glibc's localtime() looks at /etc/localtime every time."""

    converter = staticmethod(time.gmtime)


def tag_records_with_request_id() -> None:
    """Every record carries the id of the request it was logged in (`-` outside one), whichever handler gets it."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "tags_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    factory.tags_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure_logging(level: str) -> None:
    tag_records_with_request_id()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "line": {"()": _UtcFormatter, "fmt": LINE_FORMAT},
            },
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "line"},
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
