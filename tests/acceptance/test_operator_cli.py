"""The operator's commands as a person runs them: requeue, cancel, stats, prune,
doctor, list and show, through the installed ``artifactd`` script against a
real PostgreSQL, real worker processes and a fake Messages API on loopback.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.messages_server import FakeMessagesServer
from tests.support.processes import (
    ROOT,
    WorkerProcess,
    base_env,
    query,
    scalar,
    seed,
    wait_until,
)

GOOD_KEY = "sk-ant-fixed-key"
BAD_KEY = "sk-ant-revoked-key"
TRANSCRIPT = (
    "Alice: Thanks for joining. The release is blocked on the payment bug.\n"
    "Bob: I will fix the payment bug by Thursday.\n"
    "Alice: Then we ship on Friday.\n"
)


def artifactd_command() -> list[str]:
    """The installed console script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("artifactd")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("artifactd")
    return [found] if found else [sys.executable, "-m", "worker"]


def artifactd(
    db_url: str, *args: str, timeout_s: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*artifactd_command(), *args],
        env=base_env(db_url, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """Standard output parsed as one JSON document (nothing else may be on it)."""
    return json.loads(result.stdout)


def llm_env(server: FakeMessagesServer, key: str, **extra: str) -> dict[str, str]:
    return {
        "ARTIFACTD_GENERATOR": "anthropic",
        "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_BASE_URL": server.base_url,
        **extra,
    }


@pytest.fixture
def llm() -> Iterator[FakeMessagesServer]:
    """A Messages API that accepts only ``GOOD_KEY`` and answers 401 otherwise."""
    with FakeMessagesServer(require_api_key=GOOD_KEY) as server:
        yield server


class _Unauthorized(BaseHTTPRequestHandler):
    """Answers every request as the API answers a revoked key."""

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        body = json.dumps(
            {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": "invalid x-api-key",
                },
            }
        ).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - inherited name
        pass


@pytest.fixture
def revoking_api() -> Iterator[str]:
    """A loopback API that rejects every key, even on ``GET /v1/models``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def states(db_url: str) -> list[tuple[str, str | None, int]]:
    return query(
        db_url,
        "SELECT state, content->>'error_code', attempts FROM generated_artifacts "
        "ORDER BY 1, 2, 3",
    )


def test_auth_failures__requeued_after_the_key_is_fixed_and_drained(
    clean_db: str, tmp_path: Path, llm: FakeMessagesServer
) -> None:
    transcript = tmp_path / "standup.txt"
    transcript.write_text(TRANSCRIPT, "utf-8")
    enqueued = artifactd(
        clean_db,
        "enqueue",
        str(transcript),
        "--type",
        "meeting_minutes",
        "--repeat",
        "4",
        "--json",
    )
    assert enqueued.returncode == 0, enqueued.stderr
    ids = sorted(e["artifact_id"] for e in as_json(enqueued))
    broken = artifactd(clean_db, "run", "--drain", **llm_env(llm, BAD_KEY))
    assert broken.returncode == 0, broken.stderr
    assert states(clean_db) == [("failed", "LLM_AUTH_FAILED", 1)] * 4
    before = query(clean_db, "SELECT * FROM generated_artifacts ORDER BY id")

    dry = artifactd(
        clean_db, "requeue", "--error-code", "LLM_AUTH_FAILED", "--dry-run", "--json"
    )

    assert dry.returncode == 0, dry.stderr
    assert as_json(dry)["matched"] == 4 and as_json(dry)["requeued"] == []
    assert sorted(p["id"] for p in as_json(dry)["preview"]) == ids
    assert query(clean_db, "SELECT * FROM generated_artifacts ORDER BY id") == before

    requeued = artifactd(clean_db, "requeue", "--error-code", "LLM_AUTH_FAILED")

    assert requeued.returncode == 0, requeued.stderr
    assert "requeued 4 artifact(s)" in requeued.stdout
    assert states(clean_db) == [("processing", None, 0)] * 4
    kept = query(
        clean_db,
        "SELECT metadata->'previous_failures'->0->>'error_code' FROM generated_artifacts",
    )
    assert kept == [("LLM_AUTH_FAILED",)] * 4

    fixed = artifactd(clean_db, "run", "--drain", **llm_env(llm, GOOD_KEY))

    assert fixed.returncode == 0, fixed.stderr
    assert states(clean_db) == [("success", None, 1)] * 4
    assert (
        scalar(
            clean_db,
            "SELECT count(*) FROM generated_artifacts WHERE content->>'format' = 'markdown'",
        )
        == 4
    )
    stats = artifactd(clean_db, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert as_json(stats)["totals"]["succeeded"] == 4
    assert as_json(stats)["queue"]["waiting"] == 0


def test_cancel__a_running_job_stops_at_its_next_renewal_and_writes_nothing(
    clean_db: str, tmp_path: Path
) -> None:
    [artifact_id] = seed(clean_db, 1)
    with FakeMessagesServer(latency_s=60.0) as slow:
        worker = WorkerProcess(
            clean_db,
            tmp_path / "worker.log",
            **llm_env(slow, "sk-test", ARTIFACTD_LEASE_S="1.5"),
        )
        try:
            wait_until(
                lambda: slow.in_flight == 1, timeout_s=60, message="request sent"
            )

            cancelled = artifactd(clean_db, "cancel", artifact_id, "--json")

            assert cancelled.returncode == 0, cancelled.stderr
            [row] = as_json(cancelled)["cancelled"]
            assert row["artifact_id"] == artifact_id and row["was_running"] is True
            # The answer would take 60 s; the worker hangs up long before.
            wait_until(
                lambda: slow.in_flight == 0, timeout_s=30, message="request abandoned"
            )
            wait_until(
                lambda: "artifact.lease_lost" in worker.log_text(),
                timeout_s=30,
                message="worker logs the lost lease",
            )
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout_s=60) == 0
        finally:
            worker.kill()

    assert states(clean_db) == [("failed", "CANCELLED", 1)]
    written_by_worker = scalar(
        clean_db,
        "SELECT metadata ? 'model' OR metadata ? 'errors' FROM generated_artifacts",
    )
    assert written_by_worker is False


def test_prune__removes_only_old_rows_from_a_large_table(clean_db: str) -> None:
    task_id = scalar(
        clean_db,
        "INSERT INTO tasks (name, transcript) VALUES ('bulk', 'A: hi.') RETURNING id",
    )
    query(
        clean_db,
        """
        INSERT INTO generated_artifacts
            (task_id, artifact_type, version, state, content, created_at,
             started_at, finished_at)
        SELECT %(task)s, 'summary', g,
               CASE WHEN g %% 10 = 0 THEN 'failed' ELSE 'success' END, '{}'::jsonb,
               now() - make_interval(days => age.d), now() - make_interval(days => age.d),
               now() - make_interval(days => age.d)
        FROM generate_series(1, 20000) AS g,
             LATERAL (SELECT CASE WHEN g <= 15000 THEN 45 ELSE 2 END AS d) AS age
        RETURNING 1
        """,
        {"task": task_id},
    )
    query(
        clean_db,
        "INSERT INTO notifications (artifact_id, event, channel, state, sent_at) "
        "SELECT id, 'success', 'wecom', 'sent', finished_at FROM generated_artifacts "
        "RETURNING 1",
    )
    [waiting] = seed(clean_db, 1, created_at="2000-01-01T00:00:00Z")

    dry = artifactd(clean_db, "prune", "--older-than", "30d", "--dry-run", "--json")

    assert dry.returncode == 0, dry.stderr
    assert (as_json(dry)["artifacts"], as_json(dry)["notifications"]) == (15000, 15000)
    assert scalar(clean_db, "SELECT count(*) FROM generated_artifacts") == 20001

    pruned = artifactd(clean_db, "prune", "--older-than", "30d", "--json")

    assert pruned.returncode == 0, pruned.stderr
    report = as_json(pruned)
    assert (report["artifacts"], report["notifications"]) == (15000, 15000)
    assert report["batches"] >= 30  # 1,000 rows per transaction, in each table
    left = query(
        clean_db,
        "SELECT state, finished_at > now() - interval '30 days', count(*) "
        "FROM generated_artifacts GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert left == [
        ("failed", True, 500),
        ("processing", None, 1),
        ("success", True, 4500),
    ]
    assert scalar(clean_db, "SELECT count(*) FROM notifications") == 5000
    assert (
        scalar(
            clean_db, "SELECT state FROM generated_artifacts WHERE id = %s", (waiting,)
        )
        == "processing"
    )


def test_doctor__all_ok_with_a_reachable_llm_and_webhook(
    clean_db: str, llm: FakeMessagesServer
) -> None:
    # The fake's unknown routes answer 404: reachable, which is all doctor asks.
    result = artifactd(
        clean_db,
        "doctor",
        "--json",
        ARTIFACTD_WECOM_WEBHOOK_URL=f"{llm.base_url}/cgi-bin/webhook/send?key=secret-key",
        **llm_env(llm, GOOD_KEY),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    report = as_json(result)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is True
    assert statuses == {
        "settings": "ok",
        "artifact types": "ok",
        "database": "ok",
        "schema": "ok",
        "llm": "ok",
        "webhook wecom": "ok",
    }
    assert "secret-key" not in result.stdout + result.stderr


def test_doctor__says_what_to_do_about_a_revoked_key_and_a_dead_webhook(
    clean_db: str, revoking_api: str
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    result = artifactd(
        clean_db,
        "doctor",
        ARTIFACTD_WECOM_WEBHOOK_URL=f"http://127.0.0.1:{closed_port}/send?key=k",
        ARTIFACTD_GENERATOR="anthropic",
        ANTHROPIC_API_KEY=BAD_KEY,
        ANTHROPIC_BASE_URL=revoking_api,
    )

    assert result.returncode == 1
    assert "rejected the key (HTTP 401)" in result.stdout
    assert "-> check ANTHROPIC_API_KEY" in result.stdout
    assert f"cannot reach http://127.0.0.1:{closed_port}" in result.stdout
    assert "2 check(s) failed" in result.stdout
    assert BAD_KEY not in result.stdout + result.stderr
