"""Artifacts to work on, written the way any program may enqueue: plain INSERTs.

Plus what the benchmarks read back from the database: the drain window and
which workers are listening. Helpers that take a URL commit before they
return.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

TRANSCRIPT = "Alice: the release is ready.\nBob: then we ship it on Friday.\n"


def create_task(url: str, transcript: str = TRANSCRIPT) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO tasks (name, transcript) VALUES ('bench', %s) RETURNING id",
            (transcript,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def enqueue(url: str, count: int, *, artifact_type: str = "meeting_minutes") -> str:
    """``count`` artifacts in ``processing`` for one new task, in one statement.

    Versions are given, so the per-row version trigger has nothing to look up.
    Returns the task id.
    """
    task_id = create_task(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO generated_artifacts (task_id, artifact_type, version, state)
            SELECT %(task_id)s, %(type)s, g, 'processing'
            FROM generate_series(1, %(count)s) AS g
            """,
            {"task_id": task_id, "type": artifact_type, "count": count},
        )
        conn.execute("ANALYZE")
    return task_id


def drain_window(url: str) -> tuple[datetime | None, datetime | None, int]:
    """(first claim, last final write, artifacts succeeded), in the database clock."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT min(started_at), max(finished_at),
                   count(*) FILTER (WHERE state = 'success')
            FROM generated_artifacts
            """
        ).fetchone()
    assert row is not None
    return row[0], row[1], int(row[2])


def listening_backends(conn: psycopg.Connection) -> set[int]:
    """Sessions of this database that are listening for new artifacts now.

    A worker's listener runs ``LISTEN "artifactd_new"`` and, ten seconds on,
    a probe; callers keep the union of what they have seen.
    """
    rows = conn.execute(
        """
        SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND query = 'LISTEN "artifactd_new"'
        """
    ).fetchall()
    return {int(r[0]) for r in rows}
