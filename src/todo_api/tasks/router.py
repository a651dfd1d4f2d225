"""The task routes: declare, call the service, answer. `OwnerRoute` has checked the token (401) and the path owner
(403) before FastAPI parses anything, so `user_id` is the caller's own; every parameter is declared once, with
`Annotated`, and FastAPI both validates (400) and documents it."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Header, Path, Query, Request, status

from todo_api.context import app_context
from todo_api.docs import problems
from todo_api.errors import ValidationFailed
from todo_api.http import JsonResponse
from todo_api.routing import OwnerRoute, operation_id
from todo_api.tasks.schemas import (
    Deleted,
    ListQuery,
    TagCounts,
    Task,
    TaskCompletion,
    TaskPage,
    TaskPatch,
    TaskWrite,
)
from todo_api.tasks.service import TaskService, TaskState

router = APIRouter(
    prefix="/api/{user_id}/tasks", tags=["tasks"], route_class=OwnerRoute, generate_unique_id_function=operation_id
)

UserId = Annotated[str, Path(description="The owner's id: the token's `sub`, as `GET /api/auth/me` gives it.")]
TaskId = Annotated[uuid.UUID, Path(description="The task's id (a UUID).")]
# Declared on each write for the document (and FastAPI's header checks); read whole by `_if_match`, since a
# client may send several `If-Match` lines.
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="ETag(s) the task must still have (RFC 9110), or `*`; otherwise 412 and no change.",
    ),
]
WRITE_ERRORS = problems(400, 401, 403, 404, 412, 503)


def _task_response(task: TaskState, status_code: int = status.HTTP_200_OK, **headers: str) -> JsonResponse:
    return JsonResponse(task.public(), status_code=status_code, headers={"ETag": task.etag, **headers})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Task, responses=problems(400, 401, 403, 503))
async def create_task(request: Request, user_id: UserId, body: TaskWrite) -> JsonResponse:
    """Create a task; absent fields take their defaults."""
    context = app_context(request)
    async with context.database.session(write=True) as session:
        task = await TaskService(session, user_id, context.events).create(body.model_dump())
    location = f"/api/{quote(user_id, safe='')}/tasks/{task.row['id']}"
    return _task_response(task, status.HTTP_201_CREATED, Location=location)


@router.get("", response_model=TaskPage, responses=problems(400, 401, 403, 503))
async def list_tasks(request: Request, user_id: UserId, query: Annotated[ListQuery, Query()]) -> JsonResponse:
    """A page of your tasks, newest first unless asked otherwise; by `page`, or walked with `cursor`."""
    context = app_context(request)
    async with context.database.session(write=False) as session:
        page = await TaskService(session, user_id, cursors=context.cursors).list(query)
    headers = {}
    if page.next_cursor is not None:
        headers["Link"] = f'<{_next_page_url(request, page.next_cursor)}>; rel="next"'
    return JsonResponse(page.public(), headers=headers)


def _next_page_url(request: Request, cursor: str) -> str:
    """This listing's URL (relative), with `cursor` in place of `page` (RFC 8288's `rel="next"` target)."""
    kept = [(name, value) for name, value in request.query_params.multi_items() if name not in ("page", "cursor")]
    return f"{request.url.path}?{urlencode([*kept, ('cursor', cursor)])}"


@router.delete("", response_model=Deleted, responses=problems(400, 401, 403, 503))
async def clear_completed_tasks(
    request: Request,
    user_id: UserId,
    completed: Annotated[Literal["true"], Query(description="Must be `true`: only completed tasks are cleared.")],
) -> JsonResponse:
    """Delete every completed task of yours, in one transaction (an event for each)."""
    if request.query_params.getlist("completed") != ["true"]:  # `completed=false&completed=true` is no consent
        raise ValidationFailed.one(["query", "completed"], "Give completed=true exactly once", "literal_error")
    context = app_context(request)
    async with context.database.session(write=True) as session:
        deleted = await TaskService(session, user_id, context.events).clear_completed()
    return JsonResponse({"deleted": deleted})


@router.get("/{task_id}", response_model=Task, responses=problems(400, 401, 403, 404, 503))
async def get_task(request: Request, user_id: UserId, task_id: TaskId) -> JsonResponse:
    """One task."""
    async with app_context(request).database.session(write=False) as session:
        task = await TaskService(session, user_id).get(task_id)
    return _task_response(task)


def _if_match(request: Request) -> str | None:
    """Every `If-Match` line the request has, as one list (RFC 9110 §5.3: repeated lines are one list); FastAPI's
    declared parameter documents it, but would hand over only the first."""
    lines = request.headers.getlist("if-match")
    return ", ".join(lines) if lines else None


async def _change(request: Request, user_id: str, task_id: uuid.UUID, changes: dict[str, object]) -> JsonResponse:
    context = app_context(request)
    async with context.database.session(write=True) as session:
        task = await TaskService(session, user_id, context.events).change(task_id, changes, _if_match(request))
    return _task_response(task)


@router.put("/{task_id}", response_model=Task, responses=WRITE_ERRORS)
async def replace_task(
    request: Request, user_id: UserId, task_id: TaskId, body: TaskWrite, if_match: IfMatch = None
) -> JsonResponse:
    """Replace a task: every absent field takes its default."""
    return await _change(request, user_id, task_id, body.model_dump())


@router.patch("/{task_id}", response_model=Task, responses=WRITE_ERRORS)
async def update_task(
    request: Request, user_id: UserId, task_id: TaskId, body: TaskPatch, if_match: IfMatch = None
) -> JsonResponse:
    """Change some fields of a task; `{}` changes nothing."""
    return await _change(request, user_id, task_id, body.model_dump(include=body.model_fields_set))


@router.patch("/{task_id}/complete", response_model=Task, responses=WRITE_ERRORS)
async def complete_task(
    request: Request,
    user_id: UserId,
    task_id: TaskId,
    body: Annotated[TaskCompletion | None, Body()] = None,
    if_match: IfMatch = None,
) -> JsonResponse:
    """Mark a task done (no body, or `{}`), or open again with `{"completed": false}`. Idempotent."""
    completion = body or TaskCompletion()
    return await _change(request, user_id, task_id, {"completed": completion.completed})


@router.delete("/{task_id}", response_model=Task, responses=WRITE_ERRORS)
async def delete_task(request: Request, user_id: UserId, task_id: TaskId, if_match: IfMatch = None) -> JsonResponse:
    """Delete a task for good; the answer is the task as it was."""
    context = app_context(request)
    async with context.database.session(write=True) as session:
        task = await TaskService(session, user_id, context.events).delete(task_id, _if_match(request))
    return _task_response(task)


tags_router = APIRouter(
    prefix="/api/{user_id}/tags", tags=["tasks"], route_class=OwnerRoute, generate_unique_id_function=operation_id
)


@tags_router.get("", response_model=TagCounts, responses=problems(401, 403, 503))
async def list_tags(request: Request, user_id: UserId) -> JsonResponse:
    """Every tag on your tasks, with how many carry it, sorted by name."""
    async with app_context(request).database.session(write=False) as session:
        items = await TaskService(session, user_id).tag_counts()
    return JsonResponse({"items": items})
