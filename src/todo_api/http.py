"""JSON out, fast (orjson), and pydantic's errors in the shape FastAPI users know."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from pydantic_core import ErrorDetails
from starlette.responses import Response

from todo_api.errors import ErrorItem, error_item


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_items(errors: Iterable[ErrorDetails], prefix: tuple[str, ...] = ()) -> list[ErrorItem]:
    """Pydantic's errors in FastAPI's familiar shape, minus `input` (it may hold a password)."""
    return [error_item((*prefix, *err["loc"]), err["msg"], err["type"]) for err in errors]
