"""The API's errors and their one rendering: RFC 9457 problem details.

    ApiError
     ├── ValidationFailed        400  /problems/validation
     ├── Unauthorized            401  /problems/unauthorized
     ├── Forbidden               403  /problems/forbidden
     ├── NotFound                404  /problems/not-found
     ├── MethodNotAllowed        405  /problems/method-not-allowed
     ├── Conflict                409  /problems/conflict
     ├── PreconditionFailed      412  /problems/precondition-failed
     ├── PayloadTooLarge         413  /problems/payload-too-large
     ├── HeadersTooLarge         431  /problems/headers-too-large
     ├── RateLimited             429  /problems/rate-limited
     ├── InternalError           500  /problems/internal
     └── Unavailable             503  /problems/unavailable

Business code raises these; `problem_response` is the only place that turns one into HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypedDict

import orjson
from starlette.responses import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ErrorItem(TypedDict):
    loc: list[str | int]
    msg: str
    type: str


def error_item(loc: Sequence[str | int], msg: str, type_: str) -> ErrorItem:
    return {"loc": list(loc), "msg": msg, "type": type_}


class ApiError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal Server Error"
    description: ClassVar[str] = "The server failed to answer. The request id in X-Request-ID finds it in the logs."

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[ErrorItem] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})
        super().__init__(self.detail)

    @classmethod
    def type_uri(cls) -> str:
        return f"/problems/{cls.slug}"


class ValidationFailed(ApiError):
    status, slug, title = 400, "validation", "Invalid Request"
    description = "The request is malformed: `errors` lists each field that is wrong, with `loc`, `msg`, `type`."

    def __init__(self, errors: Sequence[ErrorItem], detail: str | None = None) -> None:
        super().__init__(detail or "The request is not valid; see errors.", errors=errors)

    @classmethod
    def one(cls, loc: Sequence[str | int], msg: str, type_: str = "value_error") -> ValidationFailed:
        return cls([error_item(loc, msg, type_)], detail=msg)


class Unauthorized(ApiError):
    status, slug, title = 401, "unauthorized", "Unauthorized"
    description = "A valid bearer token is required, or the credentials are wrong."

    def __init__(self, detail: str, *, token_sent: bool = True) -> None:
        # RFC 6750 §3: no error code when the request carried no token at all.
        challenge = f'Bearer error="invalid_token", error_description="{detail}"' if token_sent else "Bearer"
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    status, slug, title = 403, "forbidden", "Forbidden"
    description = "The token is valid, but it does not grant access to this resource."


class NotFound(ApiError):
    status, slug, title = 404, "not-found", "Not Found"
    description = "There is nothing here, or nothing of yours."


class MethodNotAllowed(ApiError):
    status, slug, title = 405, "method-not-allowed", "Method Not Allowed"
    description = "The resource exists but does not support this method; `Allow` lists those it does."


class Conflict(ApiError):
    status, slug, title = 409, "conflict", "Conflict"
    description = "The request clashes with existing data, such as a username or email already taken."

    def __init__(self, loc: Sequence[str | int], msg: str) -> None:
        super().__init__(msg, errors=[error_item(loc, msg, "conflict")])


class PreconditionFailed(ApiError):
    status, slug, title = 412, "precondition-failed", "Precondition Failed"
    description = "`If-Match` names a version that is no longer current; fetch the resource again."


class PayloadTooLarge(ApiError):
    status, slug, title = 413, "payload-too-large", "Payload Too Large"
    description = "The request body is larger than the API accepts (64 KiB)."


class HeadersTooLarge(ApiError):
    status, slug, title = 431, "headers-too-large", "Request Header Fields Too Large"
    description = "The request's headers are larger than the API accepts (16 KiB in all)."


class RateLimited(ApiError):
    status, slug, title = 429, "rate-limited", "Too Many Requests"
    description = "Too many attempts; `Retry-After` says how many seconds to wait."

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class InternalError(ApiError):
    pass


class Unavailable(ApiError):
    status, slug, title = 503, "unavailable", "Service Unavailable"
    description = "A service this API depends on is not answering; try again after `Retry-After` seconds."

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


PROBLEMS: dict[str, type[ApiError]] = {
    cls.slug: cls
    for cls in (
        ValidationFailed,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        HeadersTooLarge,
        RateLimited,
        InternalError,
        Unavailable,
    )
}
BY_STATUS: dict[int, type[ApiError]] = {cls.status: cls for cls in PROBLEMS.values()}


def problem_body(error: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": error.type_uri(),
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    if error.errors is not None:
        body["errors"] = error.errors
    return body


def problem_response(error: ApiError) -> Response:
    return Response(
        orjson.dumps(problem_body(error)),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )
