"""OpenAPI for errors (problem+json, never FastAPI's 422) and the human-readable /problems/… pages."""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from starlette.responses import HTMLResponse

from todo_api.errors import BY_STATUS, PROBLEM_MEDIA_TYPE, PROBLEMS, NotFound
from todo_api.routing import AuthenticatedRoute


class ErrorItemOut(BaseModel):
    loc: list[str | int] = Field(examples=[["body", "title"]])
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(examples=["/problems/validation"], description="Branch on this: one of /problems/….")
    title: str
    status: int
    detail: str
    errors: list[ErrorItemOut] | None = Field(default=None, description="For 400 and 409: each field at fault.")


class Status(BaseModel):
    """What the probes answer."""

    status: str = Field(examples=["ok"])


_EXAMPLE_DETAIL = {
    400: "The request is not valid; see errors.",
    401: "A bearer token is required.",
    403: "This path belongs to another user.",
    404: "Task not found.",
    409: "This email is already taken.",
    412: "If-Match does not match the current ETag.",
    413: "The request body is larger than 65536 bytes.",
    431: "The request headers are larger than 16384 bytes.",
    429: "Too many attempts; try again later.",
    500: "Internal Server Error",
    503: "The database is not answering.",
}
_EXAMPLE_ERRORS = {
    400: [
        {
            "loc": ["body", "title"],
            "msg": "String should have at least 1 character",
            "type": "string_too_short",
        }
    ],
    409: [{"loc": ["body", "email"], "msg": "This email is already taken.", "type": "conflict"}],
}
_RETRY_AFTER = {"description": "Seconds to wait", "required": True, "schema": {"type": "integer", "minimum": 1}}
_HEADERS = {
    401: {
        "WWW-Authenticate": {"description": "RFC 6750 bearer challenge", "required": True, "schema": {"type": "string"}}
    },
    412: {"ETag": {"description": "The task's current ETag", "schema": {"type": "string"}}},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting these error statuses (plus 413, 431 and 500, which any operation may
    answer)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in (*statuses, 413, 431, 500):
        cls = BY_STATUS[code]
        example: dict[str, Any] = {
            "type": cls.type_uri(),
            "title": cls.title,
            "status": code,
            "detail": _EXAMPLE_DETAIL[code],
        }
        if code in _EXAMPLE_ERRORS:
            example["errors"] = _EXAMPLE_ERRORS[code]
        documented[code] = {
            "description": cls.description,
            "model": Problem,
            "content": {PROBLEM_MEDIA_TYPE: {"example": example}},
        }
        if code in _HEADERS:
            documented[code]["headers"] = _HEADERS[code]
    return documented


BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "A token from signup or login, or one from Better Auth. In Swagger UI: Authorize, paste it.",
}


def install_openapi(app: FastAPI) -> None:
    """Post-process FastAPI's document: problem+json instead of application/json, no 422 anywhere, and the
    bearer scheme on exactly the operations whose route class checks a token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            secured = {
                (route.path, method.lower())
                for route in app.routes
                if isinstance(route, AuthenticatedRoute)
                for method in route.methods or ()
            }
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            for route, path in schema.get("paths", {}).items():
                for method, operation in path.items():
                    if (route, method) in secured:
                        operation["security"] = [{"HTTPBearer": []}]
                    _name_optional_body(operation)
                    responses = operation.get("responses", {})
                    responses.pop("422", None)
                    for code, response in responses.items():
                        content = response.get("content", {})
                        if code.startswith(("4", "5")) and "application/json" in content:
                            content.setdefault(PROBLEM_MEDIA_TYPE, {}).setdefault(
                                "schema", content["application/json"]["schema"]
                            )
                            del content["application/json"]
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["HTTPBearer"] = BEARER_SCHEME
            components.get("schemas", {}).pop("HTTPValidationError", None)
            components.get("schemas", {}).pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _name_optional_body(operation: dict[str, Any]) -> None:
    """An optional body (`Model | None = None`) is documented by FastAPI as an inline `anyOf` of the model and
    null: say instead that the body is the named model and may be left out."""
    body = operation.get("requestBody")
    if body is None:
        return
    media = body["content"].get("application/json", {})
    options = media.get("schema", {}).get("anyOf", [])
    refs = [option for option in options if "$ref" in option]
    if len(refs) == 1 and len(options) == 2 and {"type": "null"} in options:
        media["schema"] = refs[0]
        body["required"] = False


problem_pages = APIRouter(prefix="/problems", include_in_schema=False)


@problem_pages.get("/{slug}")
async def problem_page(slug: str) -> HTMLResponse:
    cls = PROBLEMS.get(slug)
    if cls is None:
        raise NotFound(f"There is no problem type {slug!r}.")
    title = html.escape(f"{cls.status} {cls.title}")
    return HTMLResponse(
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
        f"<h1>{title}</h1><p><code>/problems/{html.escape(slug)}</code></p><p>{html.escape(cls.description)}</p>"
        "<p>Every error of this API is RFC 9457 <code>application/problem+json</code>.</p></html>"
    )
