"""How requests become rows: tasks, generations and batches.

The rules live here, apart from HTTP:

- Generate returns the pair's artifact still in ``processing`` instead of
  inserting a second; regenerate always inserts the next version (the
  version trigger picks ``max + 1``), so the last success stays readable.
- ``Idempotency-Key`` returns the first answer again. For an artifact the
  key is stored in its unique ``idempotency_key`` column. Tasks and batches
  have no such column, so their ids are derived from the key (a UUIDv5), and
  a repeat finds the row the first request made.
- Every write runs in one transaction. A unique violation from a racing
  writer (same key, or another program taking the same version) retries the
  whole transaction, which then finds what the winner wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import errors as pg_errors

from api_stub.errors import ApiError, not_found
from api_stub.pool import Database
from api_stub.schemas import BatchCreate, TaskCreate
from shared import repository
from shared.artifact_types import ArtifactType
from shared.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

_KEY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "artifactd:idempotency-key")
_TASK_ID_CONSTRAINT = "tasks_pkey"
# Races that a fresh transaction resolves by finding the winner's row.
_RACE_CONSTRAINTS = {
    "uq_generated_artifacts_idempotency_key",
    "uq_generated_artifacts_task_type_version",
}
_ATTEMPTS = 3

KEY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Accepted:
    """An artifact row, and whether it answers an earlier identical request."""

    row: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class BatchAnswer:
    batch_id: str
    rows: list[dict[str, Any]]
    replayed: bool = False


def key_id(kind: str, key: str) -> str:
    """The id a ``kind`` (task, batch) created under ``key`` gets."""
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{kind}:{key}"))


def check_artifact_type(
    types: dict[str, ArtifactType], name: str, field: str = "artifact_type"
) -> None:
    if name not in types:
        raise ApiError(
            422,
            "UNKNOWN_ARTIFACT_TYPE",
            f"no artifact type {name!r}; configured: {', '.join(sorted(types))}",
            field=field,
        )


def _retrying_races(db: Database, work: Callable[[psycopg.Connection], T]) -> T:
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with db.transaction() as conn:
                return work(conn)
        except pg_errors.UniqueViolation as exc:
            if (
                exc.diag.constraint_name not in _RACE_CONSTRAINTS
                or attempt == _ATTEMPTS
            ):
                raise
            log.info(
                "api.write_raced",
                constraint=exc.diag.constraint_name,
                attempt=attempt,
                action="retrying in a new transaction",
            )
    raise AssertionError("unreachable")  # pragma: no cover


def create_task(db: Database, body: TaskCreate, key: str | None) -> tuple[str, bool]:
    """Insert a task; returns ``(task_id, replayed)``."""
    task_id = body.id or (key_id("task", key) if key else None)
    new_task = repository.NewTask(
        name=body.name,
        transcript=body.transcript,
        id=task_id,
        meeting_time=body.meeting_time,
        note_type=body.note_type,
        language=body.language,
    )
    try:
        with db.transaction() as conn:
            created = repository.create_task(conn, new_task)
    except pg_errors.UniqueViolation as exc:
        if exc.diag.constraint_name != _TASK_ID_CONSTRAINT or task_id is None:
            raise
        # With a key, the same body again is the first request repeated.
        if key is not None:
            with db.transaction() as conn:
                existing = repository.get_task(conn, task_id)
            if existing is not None and _same_task(existing, new_task):
                return task_id, True
        if body.id is None:
            raise ApiError(
                409,
                "IDEMPOTENCY_KEY_REUSED",
                f"{KEY_HEADER} was first used for a different task",
                field=KEY_HEADER,
            ) from None
        raise ApiError(
            409, "TASK_EXISTS", f"a task with id {task_id!r} exists already", field="id"
        ) from None
    log.info("task.created", task_id=created, transcript_chars=len(body.transcript))
    return created, False


def _same_task(row: dict[str, Any], task: repository.NewTask) -> bool:
    return bool(
        row["name"] == task.name
        and row["transcript"] == task.transcript
        and row["meeting_time"] == task.meeting_time
        and row["note_type"] == task.note_type
        and row["language"] == task.language
    )


def generate(
    db: Database,
    settings: Settings,
    task_id: str,
    artifact_type: str,
    *,
    key: str | None,
    new_version: bool,
) -> Accepted:
    """Generate (or, with ``new_version``, regenerate) one artifact of a task."""

    def work(conn: psycopg.Connection) -> Accepted:
        if key is not None:
            earlier = repository.get_artifact_by_idempotency_key(conn, key)
            if earlier is not None:
                if (earlier["task_id"], earlier["artifact_type"]) != (
                    task_id,
                    artifact_type,
                ):
                    raise ApiError(
                        409,
                        "IDEMPOTENCY_KEY_REUSED",
                        f"{KEY_HEADER} was first used for another task or type",
                        field=KEY_HEADER,
                    )
                return Accepted(earlier, replayed=True)

        if not repository.lock_tasks(conn, [task_id]):
            raise not_found("TASK_NOT_FOUND", f"no task with id {task_id!r}", "task_id")

        if not new_version:
            running = repository.get_processing_artifact(conn, task_id, artifact_type)
            if running is not None:
                # NOTE: a row that already carries another request's key keeps
                # it; this key then answers with a new row once that one ends.
                if key is not None:
                    repository.set_idempotency_key(conn, running["id"], key)
                return Accepted(running)

        row = repository.create_placeholder(
            conn,
            task_id,
            artifact_type,
            max_attempts=settings.max_attempts,
            idempotency_key=key,
        )
        log.info(
            "artifact.enqueued",
            artifact_id=row["id"],
            task_id=task_id,
            artifact_type=artifact_type,
            version=row["version"],
        )
        return Accepted(row)

    return _retrying_races(db, work)


def create_batch(
    db: Database,
    settings: Settings,
    body: BatchCreate,
    *,
    key: str | None,
) -> BatchAnswer:
    """Insert every item's task (when inline) and artifact in one transaction."""
    batch_id = key_id("batch", key) if key else str(uuid.uuid4())
    wanted = [item.artifact_type for item in body.items]

    def work(conn: psycopg.Connection) -> BatchAnswer:
        if key is not None:
            repository.lock_batch(conn, batch_id)
            earlier = repository.list_batch_artifacts(conn, batch_id)
            if earlier:
                if [row["artifact_type"] for row in earlier] != wanted:
                    raise ApiError(
                        409,
                        "IDEMPOTENCY_KEY_REUSED",
                        f"{KEY_HEADER} was first used for a different batch",
                        field=KEY_HEADER,
                    )
                return BatchAnswer(batch_id, earlier, replayed=True)

        referenced = sorted({item.task_id for item in body.items if item.task_id})
        found = repository.lock_tasks(conn, referenced) if referenced else set()
        for index, item in enumerate(body.items):
            if item.task_id is not None and item.task_id not in found:
                raise not_found(
                    "TASK_NOT_FOUND",
                    f"no task with id {item.task_id!r}",
                    f"items.{index}.task_id",
                )

        rows = []
        for index, item in enumerate(body.items):
            task_id = item.task_id or _create_inline_task(conn, item.task, index)
            rows.append(
                repository.create_placeholder(
                    conn,
                    task_id,
                    item.artifact_type,
                    max_attempts=settings.max_attempts,
                    batch_id=batch_id,
                    metadata={"batch_index": index},
                )
            )
        log.info("batch.enqueued", batch_id=batch_id, items=len(rows))
        return BatchAnswer(batch_id, rows)

    return _retrying_races(db, work)


def _create_inline_task(
    conn: psycopg.Connection, task: TaskCreate | None, index: int
) -> str:
    assert task is not None
    new_task = repository.NewTask(
        name=task.name,
        transcript=task.transcript,
        id=task.id,
        meeting_time=task.meeting_time,
        note_type=task.note_type,
        language=task.language,
    )
    try:
        return repository.create_task(conn, new_task)
    except pg_errors.UniqueViolation as exc:
        if exc.diag.constraint_name != _TASK_ID_CONSTRAINT:
            raise
        raise ApiError(
            409,
            "TASK_EXISTS",
            f"a task with id {task.id!r} exists already",
            field=f"items.{index}.task.id",
        ) from None
