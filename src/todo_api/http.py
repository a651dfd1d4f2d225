"""JSON in and out: requests parsed by hand, after auth (so 401 and 403 beat a bad body, query or path), with
pydantic models that also document them in OpenAPI; and fast responses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request
from starlette.responses import Response

from todo_api.errors import ErrorItem, ValidationFailed, error_item

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


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
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            # orjson refuses lone surrogates (and integers past 64 bits); the stdlib parser keeps them, so the field
            # holding one can be named in the error.
            data = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise ValidationFailed.one(["body"], "Body is not valid JSON", "json_invalid") from None
    if not isinstance(data, dict):
        raise ValidationFailed.one(["body"], "Body must be a JSON object", "model_attributes_type")
    return data


def validate(model: type[M], data: Mapping[str, Any], where: str = "body") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValidationFailed(error_items(error.errors(include_url=False), (where,))) from None


def parse_query(request: Request, model: type[M]) -> M:
    """The query string as `model` (the last value of a repeated name, as FastAPI takes it; unknown names are the
    model's business)."""
    return validate(model, request.query_params, "query")


def parse_path(request: Request, name: str, adapter: TypeAdapter[T]) -> T:
    try:
        return adapter.validate_python(request.path_params[name])
    except ValidationError as error:
        raise ValidationFailed(error_items(error.errors(include_url=False), ("path", name))) from None


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


def parameter_doc(name: str, where: str, description: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


def query_doc(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI for a query string parsed by hand into `model`: one parameter per field."""
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    return [
        parameter_doc(name, "query", field.get("description", ""), field, name in required)
        for name, field in schema["properties"].items()
    ]
