from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status

from todo_api.auth.deps import OwnerId
from todo_api.db import Connection
from todo_api.docs import problems
from todo_api.http import JsonResponse, read_json_object, request_body_doc, validate
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

TaskId = Annotated[uuid.UUID, Path(description="The task's id (a UUID).")]
IfMatch = Annotated[
    str | None,
    Header(description="ETag(s) the task must still have (RFC 9110), or `*`; otherwise 412 and no change."),
]


async def get_service(owner_id: OwnerId, connection: Connection) -> TaskService:
    return TaskService(connection, owner_id)


Service = Annotated[TaskService, Depends(get_service)]


async def task_fields(request: Request, model: type[TaskWrite | TaskPatch | TaskCompletion]) -> dict[str, object]:
    """The editable fields the body sets; read-only ones (id, user_id, timestamps) are dropped, whatever they hold."""
    data = await read_json_object(request, empty={} if model is TaskCompletion else None)
    for name in READ_ONLY_FIELDS & data.keys():
        del data[name]
    body = validate(model, data)
    return body.model_dump(include=body.model_fields_set if model is TaskPatch else None)


def task_response(task: TaskState, status_code: int = status.HTTP_200_OK, **headers: str) -> JsonResponse:
    return JsonResponse(task.public(), status_code=status_code, headers={"ETag": task.etag, **headers})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses=problems(400, 401, 403, 503),
    openapi_extra=request_body_doc(TaskWrite),
)
async def create_task(service: Service, request: Request) -> JsonResponse:
    """Create a task; `completed` defaults to false."""
    task = await service.create(await task_fields(request, TaskWrite))
    location = f"/api/{quote(service.owner_id, safe='')}/tasks/{task.row['id']}"
    return task_response(task, status.HTTP_201_CREATED, Location=location)


@router.get("", response_model=TaskPage, responses=problems(400, 401, 403, 503))
async def list_tasks(service: Service, query: Annotated[ListQuery, Query()]) -> JsonResponse:
    """A page of your tasks, newest first unless asked otherwise."""
    return JsonResponse((await service.list(query)).public())


@router.get("/{task_id}", response_model=TaskOut, responses=problems(400, 401, 403, 404, 503))
async def get_task(service: Service, task_id: TaskId) -> JsonResponse:
    """One task."""
    return task_response(await service.get(task_id))


@router.put(
    "/{task_id}",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 412, 503),
    openapi_extra=request_body_doc(TaskWrite),
)
async def replace_task(service: Service, task_id: TaskId, request: Request, if_match: IfMatch = None) -> JsonResponse:
    """Replace a task: absent `description` becomes null, absent `completed` false."""
    fields = await task_fields(request, TaskWrite)
    return task_response(await service.change(task_id, fields, if_match))


@router.patch(
    "/{task_id}",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 412, 503),
    openapi_extra=request_body_doc(TaskPatch),
)
async def update_task(service: Service, task_id: TaskId, request: Request, if_match: IfMatch = None) -> JsonResponse:
    """Change some fields of a task; `{}` changes nothing."""
    fields = await task_fields(request, TaskPatch)
    return task_response(await service.change(task_id, fields, if_match))


@router.patch(
    "/{task_id}/complete",
    response_model=TaskOut,
    responses=problems(400, 401, 403, 404, 412, 503),
    openapi_extra=request_body_doc(TaskCompletion, required=False),
)
async def complete_task(service: Service, task_id: TaskId, request: Request, if_match: IfMatch = None) -> JsonResponse:
    """Mark a task done (no body, or `{}`), or open again with `{"completed": false}`. Idempotent."""
    fields = await task_fields(request, TaskCompletion)
    return task_response(await service.change(task_id, fields, if_match))


@router.delete("/{task_id}", response_model=TaskOut, responses=problems(400, 401, 403, 404, 412, 503))
async def delete_task(service: Service, task_id: TaskId, if_match: IfMatch = None) -> JsonResponse:
    """Delete a task for good; the answer is the task as it was."""
    return task_response(await service.delete(task_id, if_match))
