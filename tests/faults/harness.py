"""Building blocks the fault tests share: worker settings, rows, waiting.

Workers are real ``python -m worker run`` processes (``WorkerProcess``); the
LLM and the robot are the loopback fakes. Settings are kept short (leases of
a few seconds, small timeouts) so a fault plays out in seconds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

from tests.fakes.messages_server import FakeMessagesServer
from tests.fakes.robot_server import FakeRobotServer
from tests.support.processes import WorkerProcess, scalar, wait_until

ROBOT_KEY = "robot-key-faults"


def secret_key() -> str:
    """An API key unique to one test, so a grep for it finds only leaks."""
    return f"sk-ant-faults-{secrets.token_hex(12)}"


def llm_env(server: FakeMessagesServer, key: str, **extra: str) -> dict[str, str]:
    return {
        "ARTIFACTD_GENERATOR": "anthropic",
        "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_BASE_URL": server.base_url,
        "ARTIFACTD_MODEL": "claude-fake-1",
        **extra,
    }


def robot_env(robot: FakeRobotServer, **extra: str) -> dict[str, str]:
    """A WeCom channel on the fake robot, with no rate limit in the way."""
    return {
        "ARTIFACTD_WECOM_WEBHOOK_URL": robot.wecom_url(ROBOT_KEY),
        "ARTIFACTD_FRONTEND_URL": "https://notes.example/app",
        "ARTIFACTD_NOTIFY_RATE_PER_MINUTE": "10000",
        "ARTIFACTD_NOTIFY_BACKOFF_S": "0.5",
        "ARTIFACTD_NOTIFY_TIMEOUT_S": "2",
        "ARTIFACTD_NOTIFY_POLL_INTERVAL_S": "0.5",
        **extra,
    }


def enqueue(
    db_url: str,
    transcripts: Iterable[str],
    *,
    artifact_type: str = "meeting_minutes",
    max_attempts: int = 5,
) -> list[str]:
    """A task per transcript and one artifact each, in one plain transaction."""
    ids: list[str] = []
    with psycopg.connect(db_url) as conn:
        for number, transcript in enumerate(transcripts):
            task_id = returning(
                conn,
                "INSERT INTO tasks (name, transcript) VALUES (%s, %s) RETURNING id",
                (f"meeting {number}", transcript),
            )
            ids.append(
                returning(
                    conn,
                    "INSERT INTO generated_artifacts "
                    "(task_id, artifact_type, state, max_attempts) "
                    "VALUES (%s, %s, 'processing', %s) RETURNING id::text",
                    (task_id, artifact_type, max_attempts),
                )
            )
    return ids


def returning(conn: psycopg.Connection, statement: str, params: tuple) -> Any:
    """The one value an ``INSERT … RETURNING`` gives back."""
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


def processing(db_url: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(*) FROM generated_artifacts WHERE state = 'processing'",
        )
    )


def finished(db_url: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(*) FROM generated_artifacts WHERE state <> 'processing'",
        )
    )


def wait_drained(procs: Iterable[WorkerProcess], timeout_s: float = 120.0) -> list[int]:
    """Exit codes of ``--drain`` workers, each waited for in turn."""
    return [proc.wait(timeout_s=timeout_s) for proc in procs]


def wait_finished(db_url: str, count: int, timeout_s: float = 60.0) -> None:
    wait_until(
        lambda: finished(db_url) >= count,
        timeout_s=timeout_s,
        interval_s=0.1,
        message=f"{count} artifacts finished",
    )


def logs(procs: Iterable[WorkerProcess]) -> list[Path]:
    return [proc.log_path for proc in procs]


def assert_secret_absent(secret: str, db_url: str, paths: Iterable[Path]) -> None:
    """``secret`` appears in no log file and in no row the workers wrote."""
    for path in paths:
        assert secret not in path.read_text("utf-8", "replace"), (
            f"secret leaked into {path.name}"
        )
    leaked = scalar(
        db_url,
        """
        SELECT count(*) FROM generated_artifacts a
        WHERE strpos(a.content::text || a.metadata::text, %(s)s) > 0
           OR EXISTS (SELECT 1 FROM notifications n
                      WHERE n.artifact_id = a.id
                        AND strpos(coalesce(n.last_error, ''), %(s)s) > 0)
        """,
        {"s": secret},
    )
    assert leaked == 0, "secret leaked into an artifact row"
