"""JSON in and out: strict request-body parsing (after auth, so 401 beats bad JSON) and fast responses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request
from starlette.responses import Response

from todo_api.errors import ErrorItem, ValidationFailed, error_item

M = TypeVar("M", bound=BaseModel)


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_items(errors: Iterable[ErrorDetails], prefix: tuple[str, ...] = ()) -> list[ErrorItem]:
    """Pydantic's errors in FastAPI's familiar shape, minus `input` (it may hold a password)."""
    return [error_item((*prefix, *err["loc"]), err["msg"], err["type"]) for err in errors]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: Request, *, empty: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The body as a JSON object; `empty` stands in for a body with no bytes, where that is allowed."""
    raw = await request.body()
    if not raw.strip() and empty is not None:
        return dict(empty)
    try:
        # The stdlib parser keeps lone surrogates, so the field holding one can be named in the error.
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ValidationFailed.one(["body"], "Body is not valid JSON", "json_invalid") from None
    if not isinstance(data, dict):
        raise ValidationFailed.one(["body"], "Body must be a JSON object", "model_attributes_type")
    return data


def validate(model: type[M], data: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValidationFailed(error_items(error.errors(include_url=False), ("body",))) from None


async def parse_body(request: Request, model: type[M], *, empty: Mapping[str, Any] | None = None) -> M:
    return validate(model, await read_json_object(request, empty=empty))


def request_body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """OpenAPI for a body parsed by hand (see module doc): the model's schema, inline."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema(mode="validation")}},
        }
    }
