from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator
from pydantic_core import PydanticCustomError

from todo_api.text import CleanStr

READ_ONLY_FIELDS = frozenset({"id", "user_id", "created_at", "updated_at"})

TITLE_MAX = 200
# The white space `str.strip()` removes, spelled out: regex dialects disagree on what `\s` means.
SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# 1–TITLE_MAX characters once trimmed, none of them NUL.
TITLE_PATTERN = rf"^[{SPACE}]*[^{SPACE}\x00]([^\x00]{{0,{TITLE_MAX - 2}}}[^{SPACE}\x00])?[{SPACE}]*$"


def _trimmed_title(value: str) -> str:
    value = value.strip()
    if not value:
        raise PydanticCustomError("string_too_short", "Title must have at least 1 character after trimming")
    if len(value) > TITLE_MAX:
        raise PydanticCustomError("string_too_long", f"Title must have at most {TITLE_MAX} characters after trimming")
    return value


Title = Annotated[
    CleanStr,
    AfterValidator(_trimmed_title),
    Field(
        description=f"1–{TITLE_MAX} characters after trimming white space; stored trimmed.",
        examples=["Buy milk"],
        json_schema_extra={"pattern": TITLE_PATTERN},
    ),
]
Description = Annotated[CleanStr, Field(max_length=2000, examples=["Two litres, semi-skimmed"])]


def _document_read_only(schema: dict[str, Any]) -> None:
    for name in sorted(READ_ONLY_FIELDS):
        schema["properties"][name] = {
            "readOnly": True,
            "description": "Ignored when sent, whatever its type.",
        }


class TaskBody(BaseModel):
    """What every task body shares: strict types, unknown fields refused, read-only fields dropped unseen (so a
    client may send back what it read)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_document_read_only)

    @model_validator(mode="before")
    @classmethod
    def _drop_read_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and not READ_ONLY_FIELDS.isdisjoint(data):
            return {name: value for name, value in data.items() if name not in READ_ONLY_FIELDS}
        return data


class TaskWrite(TaskBody):
    """A whole task: the body of POST (create) and PUT (full replacement)."""

    title: Title
    description: Description | None = None
    completed: StrictBool = False


class TaskPatch(TaskBody):
    """Any of the fields; those absent stay as they are. `title` cannot be null; `description: null` clears it."""

    title: Title = None  # type: ignore[assignment]  # absent is fine, explicit null is not
    description: Description | None = None
    completed: StrictBool = None  # type: ignore[assignment]


class TaskCompletion(TaskBody):
    """The body of `completeTask` (optional: no body means `{"completed": true}`)."""

    completed: StrictBool = True


class Task(BaseModel):
    """A task as the API returns it (and as its events carry it)."""

    id: uuid.UUID
    user_id: str = Field(description="The owner: the token's `sub`.")
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime = Field(description="Moves on every change; stays when a write changes nothing.")


class TaskPage(BaseModel):
    """One page of a listing."""

    items: list[Task]
    total: int = Field(description="Every task matching the filters.")
    page: int
    page_size: int
    pages: int = Field(description="0 when `total` is 0.")


def _render(annotation: Any) -> Callable[[Any], Any] | None:
    if annotation is datetime:
        return lambda value: value.isoformat(timespec="microseconds")
    if datetime in get_args(annotation):  # datetime | None
        return lambda value: None if value is None else value.isoformat(timespec="microseconds")
    if annotation is uuid.UUID:
        return str
    return None


# How a stored row becomes the `Task` the API returns: derived from the model, so the two cannot drift apart.
_TASK_FIELDS = tuple((name, _render(field.annotation)) for name, field in Task.model_fields.items())


def task_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `Task` JSON of a stored row (times with six fractional digits, ids as strings)."""
    return {name: (row[name] if render is None else render(row[name])) for name, render in _TASK_FIELDS}


SortBy = Literal["created_at", "updated_at", "title", "completed"]
SortOrder = Literal["asc", "desc"]


class ListQuery(BaseModel):
    """The listing's query parameters; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")

    page: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=20, ge=1, le=100)
    sort_by: SortBy = "created_at"
    sort_order: SortOrder = "desc"
    completed: Literal["true", "false"] | None = Field(
        default=None, description="Only done (`true`) or open (`false`) tasks."
    )
    q: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[^\x00]*$",
        description="Case-insensitive substring of title or description; `%` and `_` are literal.",
    )

    @property
    def completion(self) -> bool | None:
        return None if self.completed is None else self.completed == "true"
