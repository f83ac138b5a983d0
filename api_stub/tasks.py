"""Routes under ``/api/v1/tasks``: create a task, generate, regenerate, list.

Each route is a plain function (Starlette runs it in a thread) that hands
the request to ``api_stub.intake`` and shapes the answer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response

from api_stub import intake
from api_stub.errors import error_responses, not_found
from api_stub.schemas import (
    Artifact,
    ArtifactAccepted,
    TaskCreate,
    TaskCreated,
    Text,
    accepted_from_row,
    artifact_from_row,
    storable_text,
)
from api_stub.state import ApiState, api_state
from shared import repository

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

State = Annotated[ApiState, Depends(api_state)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=intake.KEY_HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Repeat a POST with the same key to get the first answer again.",
    ),
]
REPLAYED_HEADER = "Idempotent-Replayed"


def task_id_or_404(task_id: str) -> str:
    """A task id from a URL; text the database cannot hold names no task."""
    try:
        return storable_text(task_id)
    except ValueError:
        raise not_found("TASK_NOT_FOUND", "no such task", "task_id") from None


@router.post(
    "",
    status_code=201,
    response_model=TaskCreated,
    responses=error_responses(401, 409, 413, 422, 503),
)
def create_task(
    body: TaskCreate, state: State, response: Response, key: IdempotencyKey = None
) -> TaskCreated:
    """Create a task (a meeting and its transcript)."""
    task_id, replayed = intake.create_task(state.database, body, key)

    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return TaskCreated(task_id=task_id)


def _accept(
    state: ApiState,
    response: Response,
    task_id: str,
    artifact_type: str,
    key: str | None,
    *,
    new_version: bool,
) -> ArtifactAccepted:
    intake.check_artifact_type(state.artifact_types, artifact_type)
    task_id = task_id_or_404(task_id)

    accepted = intake.generate(
        state.database,
        state.settings,
        task_id,
        artifact_type,
        key=key,
        new_version=new_version,
    )

    if accepted.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return accepted_from_row(accepted.row)


@router.post(
    "/{task_id}/artifacts/{artifact_type}/generate",
    status_code=202,
    response_model=ArtifactAccepted,
    responses=error_responses(401, 404, 409, 413, 422, 503),
)
def generate(
    task_id: str,
    artifact_type: str,
    state: State,
    response: Response,
    key: IdempotencyKey = None,
) -> ArtifactAccepted:
    """Queue an artifact; one of the pair still in processing is returned instead."""
    return _accept(state, response, task_id, artifact_type, key, new_version=False)


@router.post(
    "/{task_id}/artifacts/{artifact_type}/regenerate",
    status_code=202,
    response_model=ArtifactAccepted,
    responses=error_responses(401, 404, 409, 413, 422, 503),
)
def regenerate(
    task_id: str,
    artifact_type: str,
    state: State,
    response: Response,
    key: IdempotencyKey = None,
) -> ArtifactAccepted:
    """Queue a new version; earlier versions, the last success included, stay."""
    return _accept(state, response, task_id, artifact_type, key, new_version=True)


@router.get(
    "/{task_id}/artifacts",
    response_model=list[Artifact],
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 422, 503),
)
def list_artifacts(
    task_id: str,
    state: State,
    artifact_type: Annotated[Text | None, Query(max_length=64)] = None,
) -> list[Artifact]:
    """Every version of the task's artifacts, newest first, content included."""
    task_id = task_id_or_404(task_id)

    with state.database.transaction() as conn:
        rows = repository.list_task_artifacts(conn, task_id, artifact_type)
        if not rows and not repository.task_exists(conn, task_id):
            raise not_found("TASK_NOT_FOUND", f"no task with id {task_id!r}", "task_id")

    return [artifact_from_row(row) for row in rows]
