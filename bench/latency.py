"""Pickup latency: from an insert's commit to the claim that starts the job.

One idle worker (``--generator echo``) waits on a fresh database. The bench
inserts one artifact at a time with ``created_at = clock_timestamp()``, so
the row carries the moment it was built, a fraction of a millisecond before
its commit; the worker's claim stamps ``started_at`` with the start of the
claiming statement. Both are the database's clock, so the difference is the
pickup latency with no clock skew in it. After each job finishes the bench
waits a random gap before the next insert, so every insert finds the worker
idle: 50 to 150 ms with NOTIFY, and spread over a whole poll interval when
polling, so the inserts land at every phase of the worker's poll.

Two workers are measured: one with LISTEN/NOTIFY, and one whose listening
connection points at a closed port (``ARTIFACTD_LISTEN_URL``), so it can only
poll every ``poll_interval_s``, as a worker behind a transaction-mode pooler
without a direct listen URL would.
"""

from __future__ import annotations

import random
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from bench import seed
from bench.process import BenchError, Process, wait_until, worker
from bench.server import fresh_database
from bench.stats import summarize
from shared import queue
from shared.settings import Settings

GOAL_P50_MS = 5.0
GOAL_P99_MS = 25.0

_INSERT = """
INSERT INTO generated_artifacts (task_id, artifact_type, version, state, created_at)
VALUES (%(task_id)s, 'meeting_minutes', %(version)s, 'processing', clock_timestamp())
RETURNING id::text
"""


def run(
    admin_url: str,
    *,
    samples: int = 200,
    poll_samples: int = 20,
    poll_interval_s: float | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="artifactd-bench-") as tmp:
        for mode, count in (("notify", samples), ("poll", poll_samples)):
            if count <= 0:
                continue
            modes[mode] = _measure(
                admin_url, Path(tmp), mode, count, poll_interval_s, timeout_s
            )
    notify = modes.get("notify")
    goal: dict[str, Any] = {
        "notify_p50_ms_at_most": GOAL_P50_MS,
        "notify_p99_ms_at_most": GOAL_P99_MS,
    }
    if notify:
        goal["met"] = (
            notify["p50_ms"] <= GOAL_P50_MS and notify["p99_ms"] <= GOAL_P99_MS
        )
    return {
        "benchmark": "latency",
        "samples": samples,
        "poll_samples": poll_samples,
        "poll_interval_s": poll_interval_s,
        "results": modes,
        "goal": goal,
    }


def _measure(
    admin_url: str,
    logs: Path,
    mode: str,
    count: int,
    poll_interval_s: float | None,
    timeout_s: float,
) -> dict[str, Any]:
    with fresh_database(admin_url, f"lat_{mode}") as url:
        task_id = seed.create_task(url)
        env: dict[str, str] = {}
        if poll_interval_s is not None:
            env["ARTIFACTD_POLL_INTERVAL_S"] = str(poll_interval_s)
        gap_ms = (50.0, 150.0)
        if mode == "poll":
            env["ARTIFACTD_LISTEN_URL"] = _closed_port_url(url)
            interval_ms = 1000 * (poll_interval_s or _default_poll_interval_s())
            gap_ms = (50.0, 50.0 + interval_ms)
        proc = worker(url, logs / f"latency-{mode}.log", "--generator", "echo", **env)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                started = seed.listening_backends if mode == "notify" else _connected

                def ready() -> bool:
                    proc.raise_if_exited("the worker exited before it was ready")
                    return bool(started(conn))

                wait_until(ready, timeout_s=timeout_s, what="the worker to start")
                conn.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(queue.EVENTS_CHANNEL))
                )
                # Warm-up jobs, not counted: the worker's first claims prepare
                # its statements and fill its pool.
                warm = 3 if mode == "notify" else 1
                ids = [
                    _one(conn, task_id, n, proc, gap_ms, timeout_s)
                    for n in range(1, warm + count + 1)
                ]
                rows = conn.execute(
                    """
                    SELECT extract(epoch FROM started_at - created_at) * 1000
                    FROM generated_artifacts WHERE id = ANY(%s::uuid[])
                    """,
                    (ids[warm:],),
                ).fetchall()
        finally:
            proc.stop()
    pickups = [float(r[0]) for r in rows]
    return {"samples": len(pickups), **summarize(pickups, "ms")}


def _one(
    conn: psycopg.Connection,
    task_id: str,
    version: int,
    proc: Process,
    gap_ms: tuple[float, float],
    timeout_s: float,
) -> str:
    """Insert one artifact, wait for its final state, then a random idle gap."""
    row = conn.execute(_INSERT, {"task_id": task_id, "version": version}).fetchone()
    assert row is not None
    artifact_id = row[0]
    deadline = time.monotonic() + timeout_s
    while True:
        proc.raise_if_exited("the worker exited")
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise BenchError(
                f"artifact {artifact_id} not finished after {timeout_s:g}s"
            )
        for note in conn.notifies(timeout=min(remaining_s, 1.0), stop_after=1):
            if artifact_id in note.payload and '"processing"' not in note.payload:
                time.sleep(random.uniform(*gap_ms) / 1000)
                return str(artifact_id)


def _connected(conn: psycopg.Connection) -> bool:
    """The worker's pool is open (it opens once start-up is done)."""
    row = conn.execute(
        """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
        """
    ).fetchone()
    return bool(row and row[0] >= 2)


def _default_poll_interval_s() -> float:
    default = Settings.model_fields["poll_interval_s"].default
    return float(default)


def _closed_port_url(url: str) -> str:
    """``url`` with its host and port replaced by a loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return parts._replace(netloc=f"{auth}127.0.0.1:{port}", query="").geturl()
