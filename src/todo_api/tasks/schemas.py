from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator
from pydantic_core import PydanticCustomError

from todo_api.tasks.models import PRIORITIES
from todo_api.text import CleanStr

READ_ONLY_FIELDS = frozenset({"id", "user_id", "created_at", "updated_at", "completed_at"})

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

Priority = Literal["none", "low", "medium", "high"]

# RFC 3339: a date, a time with seconds, an offset. No naive times, no dates alone, no numbers.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise PydanticCustomError(
            "datetime_format", "Must be an RFC 3339 date-time with an offset, like 2026-12-24T18:00:00+01:00"
        )
    fraction = re.search(r"\.(\d+)", value)
    if fraction and len(fraction.group(1)) > 6:  # Python keeps microseconds: drop what is finer
        value = value.replace(fraction.group(0), "." + fraction.group(1)[:6])
    try:
        return datetime.fromisoformat(value.replace("z", "Z")).astimezone(UTC)
    except (ValueError, OverflowError):  # also a time whose UTC falls outside years 1–9999
        raise PydanticCustomError("datetime_parsing", "Not a valid date-time in years 1–9999 (UTC)") from None


DateTimeWithOffset = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    Field(
        strict=False, description="RFC 3339 with an offset; returned in UTC.", examples=["2026-12-24T18:00:00+01:00"]
    ),
]
TAG_MAX, TAGS_MAX = 32, 20


def _clean_tag(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= TAG_MAX:
        raise PydanticCustomError("string_length", f"A tag has 1–{TAG_MAX} characters after trimming")
    if any(unicodedata.category(character) == "Cc" for character in value):
        raise PydanticCustomError("string_pattern_mismatch", "A tag has no control characters")
    return value.lower()


def _distinct(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))  # duplicates collapse to the first, order kept


CONTROL = r"\x00-\x1f\x7f-\x9f"
# 1–TAG_MAX characters once trimmed, no control character among them (as `_clean_tag` checks).
TAG_PATTERN = rf"^[{SPACE}]*[^{SPACE}{CONTROL}]([^{CONTROL}]{{0,{TAG_MAX - 2}}}[^{SPACE}{CONTROL}])?[{SPACE}]*$"
TagName = Annotated[
    CleanStr, AfterValidator(_clean_tag), Field(examples=["home"], json_schema_extra={"pattern": TAG_PATTERN})
]
Tags = Annotated[
    list[TagName],
    Field(max_length=TAGS_MAX, description="Case-insensitive: stored lower-cased, duplicates collapsed, in order."),
    AfterValidator(_distinct),
]


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
    """A whole task: the body of POST (create) and PUT (full replacement: every absent field takes its default)."""

    title: Title
    description: Description | None = None
    completed: StrictBool = False
    priority: Priority = "none"
    due_at: DateTimeWithOffset | None = None
    tags: Tags = []


class TaskPatch(TaskBody):
    """Any of the fields; those absent stay as they are. `title` cannot be null; `description: null` and
    `due_at: null` clear them; `tags` replaces the whole list."""

    # Absent is fine, explicit null is not (for these three).
    title: Title = None  # type: ignore[assignment]
    description: Description | None = None
    completed: StrictBool = None  # type: ignore[assignment]
    priority: Priority = None  # type: ignore[assignment]
    due_at: DateTimeWithOffset | None = None
    tags: Tags = None  # type: ignore[assignment]


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
    completed_at: datetime | None = Field(description="When `completed` last became true; null while false.")
    priority: Priority
    due_at: datetime | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime = Field(description="Moves on every change; stays when a write changes nothing.")


class TaskPage(BaseModel):
    """One page of a listing."""

    items: list[Task]
    total: int = Field(description="Every task matching the filters.")
    page: int | None = Field(description="null in a cursor walk.")
    page_size: int
    pages: int = Field(description="0 when `total` is 0.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class TagCount(BaseModel):
    name: str
    count: int = Field(description="How many of your tasks carry it.")


class TagCounts(BaseModel):
    """Every tag on your tasks, sorted by name."""

    items: list[TagCount]


class Deleted(BaseModel):
    """What `clearCompletedTasks` deleted."""

    deleted: int


def _render(annotation: Any) -> Callable[[Any], Any] | None:
    if annotation is datetime:
        return lambda value: value.isoformat(timespec="microseconds")
    if datetime in get_args(annotation):  # datetime | None
        return lambda value: None if value is None else value.isoformat(timespec="microseconds")
    if annotation is uuid.UUID:
        return str
    return None


# How a stored row becomes the `Task` the API returns: derived from the model, so the two cannot drift apart.
_TASK_FIELDS = tuple(
    (name, PRIORITIES.__getitem__ if name == "priority" else _render(field.annotation))
    for name, field in Task.model_fields.items()
)


def task_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `Task` JSON of a stored row (times with six fractional digits, ids as strings)."""
    return {name: (row[name] if render is None else render(row[name])) for name, render in _TASK_FIELDS}


SortBy = Literal["created_at", "updated_at", "title", "completed", "priority", "due_at"]
SortOrder = Literal["asc", "desc"]
FilterTag = Annotated[str, AfterValidator(_clean_tag), Field(json_schema_extra={"pattern": TAG_PATTERN})]


class ListQuery(BaseModel):
    """The listing's query parameters; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")

    page: int = Field(default=1, ge=1, le=100_000, description="Absent when `cursor` is given.")
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
    priority: Priority | None = Field(default=None, description="Only tasks of this priority.")
    tag: list[FilterTag] = Field(
        default=[], max_length=TAGS_MAX, description="Repeatable: only tasks carrying every tag named."
    )
    due_min: DateTimeWithOffset | None = Field(default=None, description="Only tasks due at or after this time.")
    due_max: DateTimeWithOffset | None = Field(default=None, description="Only tasks due before this time.")
    cursor: str | None = Field(
        default=None,
        max_length=2048,
        description="`next_cursor` of the previous page, with the same sort, filters and `page_size`.",
    )

    @model_validator(mode="after")
    def _page_or_cursor(self) -> ListQuery:
        if self.cursor is not None and "page" in self.model_fields_set:
            raise PydanticCustomError("cursor_with_page", "Give either page or cursor, not both")
        return self

    @property
    def completion(self) -> bool | None:
        return None if self.completed is None else self.completed == "true"
