"""Real worker processes for tests, and bounded waiting.

Workers run as ``python -m worker run`` subprocesses with their own
environment, logging JSON to a file the test can read. Waiting is always a
bounded poll on a condition, never a bare sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    condition: Callable[[], T],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    message: str = "",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {message or condition}"
            )
        time.sleep(interval_s)


def query(url: str, sql: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(url: str, sql: str, params: Any = None) -> Any:
    rows = query(url, sql, params)
    return rows[0][0] if rows else None


def base_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARTIFACTD_", "ANTHROPIC_"))
    }
    env.update(
        ARTIFACTD_DATABASE_URL=db_url,
        ARTIFACTD_LOG_FORMAT="json",
        ARTIFACTD_GENERATOR="echo",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A ``python -m worker run`` subprocess whose log goes to a file."""

    def __init__(self, db_url: str, log_path: Path, *args: str, **env: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *args],
            env=base_env(db_url, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


@contextmanager
def workers(
    db_url: str, tmp_path: Path, count: int, *args: str, **env: str
) -> Iterator[list[WorkerProcess]]:
    """Start ``count`` workers; kill whatever is still running on exit."""
    procs = [
        WorkerProcess(db_url, tmp_path / f"worker-{i}.log", *args, **env)
        for i in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.signal(signal.SIGKILL)
            proc.kill()


def seed(
    url: str,
    count: int,
    *,
    artifact_type: str = "meeting_minutes",
    transcript: str = "Alice: hello.\nBob: we will ship it.",
    **columns: Any,
) -> list[str]:
    """One task and ``count`` processing artifacts for it; returns artifact ids."""
    with psycopg.connect(url, autocommit=True) as conn:
        task_id = conn.execute(
            "INSERT INTO tasks (name, transcript) VALUES ('seeded', %s) RETURNING id",
            (transcript,),
        ).fetchone()[0]
        names = ", ".join(columns)
        values = ", ".join(f"%({k})s" for k in columns)
        extra_cols = f", {names}" if columns else ""
        extra_vals = f", {values}" if columns else ""
        rows = conn.execute(
            # The column names are the calling test's own keyword arguments.
            "INSERT INTO generated_artifacts "  # noqa: S608
            f"(task_id, artifact_type, state{extra_cols}) "
            f"SELECT %(task_id)s, %(artifact_type)s, 'processing'{extra_vals} "
            "FROM generate_series(1, %(count)s) "
            "RETURNING id::text",
            {
                "task_id": task_id,
                "artifact_type": artifact_type,
                "count": count,
                **columns,
            },
        ).fetchall()
    return [r[0] for r in rows]
