"""``/api/v1/batches``: many generations in one call, and their progress in one call.

Each item is an existing task (``task_id``) or a new one (``task``) and an
artifact type; every item adds a version, as regenerate does. The whole
batch is one transaction: one bad item and nothing is written.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from api_stub import intake
from api_stub.errors import ApiError, error_responses, not_found
from api_stub.schemas import (
    Batch,
    BatchAccepted,
    BatchCounts,
    BatchCreate,
    accepted_from_row,
    batch_item_from_row,
)
from api_stub.state import ApiState, api_state
from api_stub.tasks import REPLAYED_HEADER, IdempotencyKey
from shared import repository

router = APIRouter(prefix="/api/v1/batches", tags=["batches"])

State = Annotated[ApiState, Depends(api_state)]


@router.post(
    "",
    status_code=202,
    response_model=BatchAccepted,
    responses=error_responses(401, 404, 409, 413, 422, 503),
)
def create_batch(
    body: BatchCreate, state: State, response: Response, key: IdempotencyKey = None
) -> BatchAccepted:
    """Queue many artifacts at once; answers each item's artifact, in order."""
    limit = state.settings.api_max_batch_items
    if len(body.items) > limit:
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            f"items: at most {limit} items a batch (ARTIFACTD_API_MAX_BATCH_ITEMS)",
            field="items",
        )
    for index, item in enumerate(body.items):
        intake.check_artifact_type(
            state.artifact_types, item.artifact_type, f"items.{index}.artifact_type"
        )

    answer = intake.create_batch(state.database, state.settings, body, key=key)

    if answer.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return BatchAccepted(
        batch_id=answer.batch_id,
        created_at=answer.rows[0]["created_at"],
        items=[accepted_from_row(row) for row in answer.rows],
    )


@router.get(
    "/{batch_id}",
    response_model=Batch,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 422, 503),
)
def get_batch(batch_id: str, state: State) -> Batch:
    """Counts per state, whether it is done, and each item's state."""
    try:
        batch_id = str(uuid.UUID(batch_id))
    except ValueError:
        raise not_found("BATCH_NOT_FOUND", "no such batch", "batch_id") from None

    with state.database.transaction() as conn:
        rows = repository.list_batch_artifacts(conn, batch_id)

    if not rows:
        raise not_found("BATCH_NOT_FOUND", f"no batch with id {batch_id!r}", "batch_id")
    counts = BatchCounts(
        processing=sum(row["state"] == "processing" for row in rows),
        success=sum(row["state"] == "success" for row in rows),
        failed=sum(row["state"] == "failed" for row in rows),
    )
    return Batch(
        batch_id=batch_id,
        created_at=min(row["created_at"] for row in rows),
        total=len(rows),
        counts=counts,
        done=counts.processing == 0,
        items=[batch_item_from_row(row) for row in rows],
    )
