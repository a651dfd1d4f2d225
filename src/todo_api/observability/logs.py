"""Logging: one record per line, each tagged with the request id (and the trace id when tracing), as text or as
JSON (`LOG_FORMAT`). Nothing here logs a secret: the access line names the path without its query, and the
libraries that would log SQL parameters (password hashes among them) are held at WARNING."""

from __future__ import annotations

import logging.config
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import orjson

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# Set by `tracing` when it is on: the current trace id (32 hex digits), or None outside a span.
current_trace_id: Callable[[], str | None] | None = None

LINE_FORMAT = "%(asctime)sZ %(levelname)s %(name)s [%(request_id)s] %(message)s"
# These log SQL parameters (password hashes among them) below WARNING: never let them.
QUIET_LOGGERS = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg", "aiokafka")
ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "client")
access_log = logging.getLogger("todo_api.access")


class _UtcFormatter(logging.Formatter):
    """Times in UTC, like everything else this API says. Also half the cost of a record (the access log writes
    one per request): without TZ set, glibc's localtime() looks at /etc/localtime every time."""

    converter = staticmethod(time.gmtime)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, trace_id (when tracing), the access
    line's fields, and the traceback (`exc_info`) when there is one."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            entry["trace_id"] = trace_id
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def tag_records_with_request_id() -> None:
    """Every record carries the id of the request it was logged in (`-` outside one), whichever handler gets it,
    and the trace id when tracing is on."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "tags_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get()
        if current_trace_id is not None:
            record.trace_id = current_trace_id()
        return record

    factory.tags_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure_logging(level: str, log_format: str = "text") -> None:
    tag_records_with_request_id()
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if log_format == "json" else {"()": _UtcFormatter, "fmt": LINE_FORMAT}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"line": formatter},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line"}},
            "root": {"level": level, "handlers": ["stderr"]},
            "loggers": {
                "uvicorn.access": {"level": level},
                "uvicorn.error": {"level": level},
                **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
            },
        }
    )
