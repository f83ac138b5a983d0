"""Artifact and task operations for code outside the worker's loop.

The API, the CLI and older synchronous callers use these; each takes an open
psycopg connection and leaves the transaction to the caller. The worker's
batched hot path runs the same statements from ``shared.queue``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared import queue
from shared.errors import ErrorCode, error_content

_ARTIFACT_COLUMNS = """
    id::text AS id, task_id, artifact_type, version, state, content, metadata,
    priority, run_after, attempts, max_attempts, lease_owner,
    lease_expires_at, idempotency_key, batch_id::text AS batch_id,
    created_at, updated_at, started_at, finished_at
"""

# A constant column list, no input.
_SELECT_ARTIFACTS = f"SELECT {_ARTIFACT_COLUMNS} FROM generated_artifacts"  # noqa: S608


@dataclass(frozen=True)
class NewTask:
    name: str
    transcript: str
    id: str | None = None
    meeting_time: datetime | None = None
    note_type: str | None = None
    language: str | None = None


def create_task(conn: psycopg.Connection, task: NewTask) -> str:
    """Insert a task; returns its id (generated when not given)."""
    row = conn.execute(
        """
        INSERT INTO tasks (id, name, meeting_time, note_type, language, transcript)
        VALUES (coalesce(%(id)s, gen_random_uuid()::text), %(name)s, %(meeting_time)s,
                %(note_type)s, %(language)s, %(transcript)s)
        RETURNING id
        """,
        {
            "id": task.id,
            "name": task.name,
            "meeting_time": task.meeting_time,
            "note_type": task.note_type,
            "language": task.language,
            "transcript": task.transcript,
        },
    ).fetchone()
    assert row is not None
    return str(row[0])


def create(
    conn: psycopg.Connection,
    task_id: str,
    artifact_type: str,
    *,
    content: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    state: str = "success",
) -> dict[str, Any]:
    """Insert a finished artifact, as the synchronous code path did."""
    return _insert(
        conn,
        task_id=task_id,
        artifact_type=artifact_type,
        state=state,
        content=content,
        metadata=metadata or {},
    )


def create_placeholder(
    conn: psycopg.Connection,
    task_id: str,
    artifact_type: str,
    *,
    priority: int = 0,
    max_attempts: int = 5,
    idempotency_key: str | None = None,
    batch_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Insert an artifact in ``processing`` for the workers to claim.

    The insert trigger wakes idle workers when the transaction commits.
    """
    return _insert(
        conn,
        task_id=task_id,
        artifact_type=artifact_type,
        state="processing",
        content=None,
        metadata=metadata or {},
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        batch_id=batch_id,
    )


def _insert(conn: psycopg.Connection, **values: Any) -> dict[str, Any]:
    values.setdefault("priority", 0)
    values.setdefault("max_attempts", 5)
    values.setdefault("idempotency_key", None)
    values.setdefault("batch_id", None)
    values["content"] = (
        Jsonb(values["content"]) if values["content"] is not None else None
    )
    values["metadata"] = Jsonb(values["metadata"])
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"""
            INSERT INTO generated_artifacts
                (task_id, artifact_type, state, content, metadata, priority,
                 max_attempts, idempotency_key, batch_id, finished_at)
            VALUES (%(task_id)s, %(artifact_type)s, %(state)s, %(content)s,
                    %(metadata)s, %(priority)s, %(max_attempts)s,
                    %(idempotency_key)s, %(batch_id)s,
                    CASE WHEN %(state)s = 'processing' THEN NULL ELSE now() END)
            RETURNING {_ARTIFACT_COLUMNS}
            """,  # noqa: S608 - a constant column list, no input
            values,
        )
        row = cur.fetchone()
    assert row is not None
    return row


def update_content_and_state(
    conn: psycopg.Connection,
    artifact_id: str,
    lease_token: str,
    *,
    state: str,
    content: dict[str, Any] | None = None,
    error_code: ErrorCode | None = None,
    error_detail: str | None = None,
    locale: str = "zh-CN",
    metadata: dict[str, Any] | None = None,
    channels: list[str] | None = None,
) -> bool:
    """Write a final state, fenced by the lease token.

    On failure the error goes into ``content`` as ``{error_code,
    error_message, hint}`` and is appended to ``metadata.errors``. Returns
    False, writing nothing, when the token no longer holds the row.
    """
    if state not in ("success", "failed"):
        raise ValueError(f"final state must be success or failed, not {state!r}")
    error = None
    if state == "failed":
        if error_code is None:
            raise ValueError("a failed state needs an error_code")
        content = error_content(error_code, locale, error_detail)
        error = {"error_code": error_code.value, "detail": error_detail}
    rows = conn.execute(
        queue.FINISH_ARTIFACTS,
        {
            "ids": [artifact_id],
            "tokens": [lease_token],
            "states": [state],
            "contents": [json.dumps(content)],
            "metadata": [json.dumps(metadata or {})],
            "errors": [json.dumps(error) if error else None],
            "channels": channels or [],
        },
    ).fetchall()
    return bool(rows)


def get_artifact(conn: psycopg.Connection, artifact_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            # A constant column list, no input.
            _SELECT_ARTIFACTS + " WHERE id = %s::uuid",
            (artifact_id,),
        )
        return cur.fetchone()


def get_status(conn: psycopg.Connection, artifact_id: str) -> dict[str, Any] | None:
    """What front ends poll: id, state, created_at, error?, updated_at,
    attempts, progress."""
    row = get_artifact(conn, artifact_id)
    if row is None:
        return None
    status: dict[str, Any] = {
        "artifact_id": row["id"],
        "state": row["state"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "attempts": row["attempts"],
        "progress": (row["metadata"] or {}).get("progress"),
    }
    if row["state"] == "failed" and row["content"]:
        status["error"] = {
            key: row["content"].get(key)
            for key in ("error_code", "error_message", "hint")
        }
    return status


# What the HTTP API adds: lookups for idempotency and de-duplication, lists,
# batches and cancel. Like the rest, each leaves the transaction to the caller.


def get_task(conn: psycopg.Connection, task_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT id, name, meeting_time, note_type, language, transcript, created_at
            FROM tasks WHERE id = %s
            """,
            (task_id,),
        )
        return cur.fetchone()


def task_exists(conn: psycopg.Connection, task_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM tasks WHERE id = %s", (task_id,))
    return row.fetchone() is not None


def lock_tasks(conn: psycopg.Connection, task_ids: list[str]) -> set[str]:
    """Lock these task rows until the transaction ends; returns the ids that exist.

    Generations take these locks before they look for an artifact in
    processing or insert one, so two requests cannot both find none and both
    insert. Rows are locked in id order, so two callers never deadlock.
    """
    rows = conn.execute(
        "SELECT id FROM tasks WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (task_ids,)
    ).fetchall()
    return {row[0] for row in rows}


# The two-integer advisory lock space, apart from the single-bigint one the
# queue and migrations use; the second integer is a hash of the batch id.
_BATCH_LOCK_CLASS = 72_450


def lock_batch(conn: psycopg.Connection, batch_id: str) -> None:
    """Serialise writers of one batch id until the transaction ends."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_BATCH_LOCK_CLASS, batch_id)
    )


def get_artifact_by_idempotency_key(
    conn: psycopg.Connection, key: str
) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _SELECT_ARTIFACTS + " WHERE idempotency_key = %s",
            (key,),
        )
        return cur.fetchone()


def get_processing_artifact(
    conn: psycopg.Connection, task_id: str, artifact_type: str
) -> dict[str, Any] | None:
    """The newest artifact of the pair still in ``processing``, if any."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _SELECT_ARTIFACTS
            + """
            WHERE task_id = %s AND artifact_type = %s AND state = 'processing'
            ORDER BY version DESC
            LIMIT 1
            """,
            (task_id, artifact_type),
        )
        return cur.fetchone()


def set_idempotency_key(conn: psycopg.Connection, artifact_id: str, key: str) -> bool:
    """Bind ``key`` to an artifact that has none yet; False when it has one."""
    row = conn.execute(
        """
        UPDATE generated_artifacts SET idempotency_key = %s
        WHERE id = %s::uuid AND idempotency_key IS NULL
        RETURNING 1
        """,
        (key, artifact_id),
    )
    return row.fetchone() is not None


def list_task_artifacts(
    conn: psycopg.Connection, task_id: str, artifact_type: str | None = None
) -> list[dict[str, Any]]:
    """Every version of every artifact of a task, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _SELECT_ARTIFACTS
            + """
            WHERE task_id = %(task_id)s
              AND (%(artifact_type)s::text IS NULL OR artifact_type = %(artifact_type)s)
            ORDER BY created_at DESC, artifact_type, version DESC
            """,
            {"task_id": task_id, "artifact_type": artifact_type},
        )
        return cur.fetchall()


def list_batch_artifacts(
    conn: psycopg.Connection, batch_id: str
) -> list[dict[str, Any]]:
    """A batch's artifacts in the order they were given (``metadata.batch_index``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _SELECT_ARTIFACTS
            + """
            WHERE batch_id = %s::uuid
            ORDER BY (metadata->>'batch_index')::int NULLS LAST, created_at, id
            """,
            (batch_id,),
        )
        return cur.fetchall()


def cancel_artifacts(
    conn: psycopg.Connection,
    artifact_ids: list[str],
    *,
    locale: str = "zh-CN",
    channels: list[str] | None = None,
) -> list[str]:
    """Fail the given rows still in ``processing`` with CANCELLED; returns their ids."""
    rows = conn.execute(
        queue.CANCEL_ARTIFACTS,
        {
            "ids": artifact_ids,
            "content": json.dumps(error_content(ErrorCode.CANCELLED, locale)),
            "channels": channels or [],
        },
    ).fetchall()
    return [row[0] for row in rows]
