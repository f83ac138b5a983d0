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
    values["content"] = Jsonb(values["content"]) if values["content"] is not None else None
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
            """,
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
            f"SELECT {_ARTIFACT_COLUMNS} FROM generated_artifacts WHERE id = %s::uuid",
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
            key: row["content"].get(key) for key in ("error_code", "error_message", "hint")
        }
    return status
