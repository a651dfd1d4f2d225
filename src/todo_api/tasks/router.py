"""The task routes. Each one checks the caller (401, 403), then parses path, query and body (400), and only then
takes a database connection; parameters are documented from the same models they are parsed with."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, status
from pydantic import TypeAdapter

from todo_api.auth.deps import path_owner
from todo_api.context import AppContext
from todo_api.db import Database
from todo_api.docs import problems
from todo_api.http import (
    JsonResponse,
    parameter_doc,
    parse_path,
    parse_query,
    query_doc,
    read_json_object,
    request_body_doc,
    validate,
)
from todo_api.tasks.schemas import (
    READ_ONLY_FIELDS,
    ListQuery,
    TaskCompletion,
    TaskOut,
    TaskPage,
    TaskPatch,
    TaskWrite,
)
from todo_api.tasks.service import TaskService, TaskState

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"])

_USER_ID = parameter_doc(
    "user_id", "path", "The owner's id: the token's `sub`, as `GET /api/auth/me` gives it.", {"type": "string"}, True
)
_TASK_ID = parameter_doc("task_id", "path", "The task's id (a UUID).", {"type": "string", "format": "uuid"}, True)
_IF_MATCH = parameter_doc(
    "If-Match",
    "header",
    "ETag(s) the task must still have (RFC 9110), or `*`; otherwise 412 and no change.",
    {"type": "string"},
    False,
)
_TASK_IDS = TypeAdapter(uuid.UUID)


def _doc(*parameters: dict[str, Any], body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"parameters": list(parameters), **(body or {})}


def _context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


def _database(request: Request) -> Database:
    return _context(request).database


def _task_id(request: Request) -> uuid.UUID:
    return parse_path(request, "task_id", _TASK_IDS)


async def _fields(request: Request, model: type[TaskWrite | TaskPatch | TaskCompletion]) -> dict[str, object]:
    """The editable fields the body sets; read-only ones (id, user_id, timestamps) are dropped, whatever they hold."""
    data = await read_json_object(request, empty={} if model is TaskCompletion else None)
    for name in READ_ONLY_FIELDS & data.keys():
        del data[name]
    body = validate(model, data)
    return body.model_dump(include=body.model_fields_set if model is TaskPatch else None)


def _task_response(task: TaskState, status_code: int = status.HTTP_200_OK, **headers: str) -> JsonResponse:
    return JsonResponse(task.public(), status_code=status_code, headers={"ETag": task.etag, **headers})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses=problems(400, 401, 403, 503),
    openapi_extra=_doc(_USER_ID, body=request_body_doc(TaskWrite)),
)
async def create_task(request: Request) -> JsonResponse:
    """Create a task; `completed` defaults to false."""
    owner_id = await path_owner(request)
    fields = await _fields(request, TaskWrite)
    async with _database(request).session(write=True) as session:
        task = await TaskService(session, owner_id, _context(request).events).create(fields)
    location = f"/api/{quote(owner_id, safe='')}/tasks/{task.row['id']}"
    return _task_response(task, status.HTTP_201_CREATED, Location=location)


@router.get(
    "",
    response_model=TaskPage,
    responses=problems(400, 401, 403, 503),
    openapi_extra=_doc(_USER_ID, *query_doc(ListQuery)),
)
async def list_tasks(request: Request) -> JsonResponse:
    """A page of your tasks, newest first unless asked otherwise."""
    owner_id = await path_owner(request)
    query = parse_query(request, ListQuery)
    async with _database(request).session(write=False) as session:
        page = await TaskService(session, owner_id, _context(request).events).list(query)
    return JsonResponse(page.public())


@router.get(
    "/{task_id}",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 503),
    openapi_extra=_doc(_USER_ID, _TASK_ID),
)
async def get_task(request: Request) -> JsonResponse:
    """One task."""
    owner_id = await path_owner(request)
    task_id = _task_id(request)
    async with _database(request).session(write=False) as session:
        task = await TaskService(session, owner_id, _context(request).events).get(task_id)
    return _task_response(task)


async def _change(request: Request, model: type[TaskWrite | TaskPatch | TaskCompletion]) -> JsonResponse:
    owner_id = await path_owner(request)
    task_id = _task_id(request)
    fields = await _fields(request, model)
    async with _database(request).session(write=True) as session:
        task = await TaskService(session, owner_id, _context(request).events).change(
            task_id, fields, request.headers.get("if-match")
        )
    return _task_response(task)


@router.put(
    "/{task_id}",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 412, 503),
    openapi_extra=_doc(_USER_ID, _TASK_ID, _IF_MATCH, body=request_body_doc(TaskWrite)),
)
async def replace_task(request: Request) -> JsonResponse:
    """Replace a task: absent `description` becomes null, absent `completed` false."""
    return await _change(request, TaskWrite)


@router.patch(
    "/{task_id}",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 412, 503),
    openapi_extra=_doc(_USER_ID, _TASK_ID, _IF_MATCH, body=request_body_doc(TaskPatch)),
)
async def update_task(request: Request) -> JsonResponse:
    """Change some fields of a task; `{}` changes nothing."""
    return await _change(request, TaskPatch)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 412, 503),
    openapi_extra=_doc(_USER_ID, _TASK_ID, _IF_MATCH, body=request_body_doc(TaskCompletion, required=False)),
)
async def complete_task(request: Request) -> JsonResponse:
    """Mark a task done (no body, or `{}`), or open again with `{"completed": false}`. Idempotent."""
    return await _change(request, TaskCompletion)


@router.delete(
    "/{task_id}",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 412, 503),
    openapi_extra=_doc(_USER_ID, _TASK_ID, _IF_MATCH),
)
async def delete_task(request: Request) -> JsonResponse:
    """Delete a task for good; the answer is the task as it was."""
    owner_id = await path_owner(request)
    task_id = _task_id(request)
    async with _database(request).session(write=True) as session:
        task = await TaskService(session, owner_id, _context(request).events).delete(
            task_id, request.headers.get("if-match")
        )
    return _task_response(task)
