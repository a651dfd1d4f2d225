"""Logging: one line per record, each tagged with the request id; nothing that logs secrets is let through."""

from __future__ import annotations

import logging.config

from todo_api.middleware import RequestIdFilter


def configure_logging(level: str) -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"request_id": {"()": RequestIdFilter}},
            "formatters": {
                "line": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
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
