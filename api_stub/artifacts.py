"""Routes under ``/api/v1/artifacts``: status, the whole artifact, cancel.

The event stream of an artifact lives in ``api_stub.event_stream``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends

from api_stub.errors import ApiError, error_responses, not_found
from api_stub.pool import Database
from api_stub.schemas import Artifact, ArtifactStatus, artifact_from_row
from api_stub.state import ApiState, api_state
from shared import repository
from shared.errors import ErrorCode
from shared.settings import Settings

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])

State = Annotated[ApiState, Depends(api_state)]


def artifact_id_or_404(artifact_id: str) -> str:
    """The canonical form of an artifact id; anything not a UUID names no artifact."""
    try:
        return str(uuid.UUID(artifact_id))
    except ValueError:
        raise not_found(
            "ARTIFACT_NOT_FOUND", f"no artifact with id {artifact_id!r}", "artifact_id"
        ) from None


def _missing(artifact_id: str) -> ApiError:
    return not_found(
        "ARTIFACT_NOT_FOUND", f"no artifact with id {artifact_id!r}", "artifact_id"
    )


def read_status(database: Database, artifact_id: str) -> ArtifactStatus | None:
    with database.transaction() as conn:
        status = repository.get_status(conn, artifact_id)
    return None if status is None else ArtifactStatus.model_validate(status)


def notification_channels(settings: Settings) -> list[str]:
    """Outbox channels for a final state the API writes (a cancel)."""
    return settings.notification_channels


@router.get(
    "/{artifact_id}/status",
    response_model=ArtifactStatus,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 422, 503),
)
def get_status(artifact_id: str, state: State) -> ArtifactStatus:
    """What front ends poll: state, times, attempts, progress, and error when failed."""
    artifact_id = artifact_id_or_404(artifact_id)

    status = read_status(state.database, artifact_id)

    if status is None:
        raise _missing(artifact_id)
    return status


@router.get(
    "/{artifact_id}",
    response_model=Artifact,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 422, 503),
)
def get_artifact(artifact_id: str, state: State) -> Artifact:
    """The whole artifact, content and metadata included."""
    artifact_id = artifact_id_or_404(artifact_id)

    with state.database.transaction() as conn:
        row = repository.get_artifact(conn, artifact_id)

    if row is None:
        raise _missing(artifact_id)
    return artifact_from_row(row)


@router.post(
    "/{artifact_id}/cancel",
    response_model=ArtifactStatus,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 409, 422, 503),
)
def cancel(artifact_id: str, state: State) -> ArtifactStatus:
    """Fail it with CANCELLED; a worker running it stops. Repeating it is harmless."""
    artifact_id = artifact_id_or_404(artifact_id)
    settings = state.settings

    with state.database.transaction() as conn:
        cancelled = repository.cancel_artifacts(
            conn,
            [artifact_id],
            locale=settings.locale,
            channels=notification_channels(settings),
        )
        status = repository.get_status(conn, artifact_id)

    if status is None:
        raise _missing(artifact_id)
    error_code = (status.get("error") or {}).get("error_code")
    if not cancelled and error_code != ErrorCode.CANCELLED:
        raise ApiError(
            409,
            "ARTIFACT_FINISHED",
            f"the artifact already ended in state {status['state']}",
            field="artifact_id",
        )
    if cancelled:
        log.info("artifact.cancelled", artifact_id=artifact_id, by="api")
    return ArtifactStatus.model_validate(status)
