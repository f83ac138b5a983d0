"""Worker processes as systemd would run them: several at once, killed for real."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.fakes.messages_server import FakeMessagesServer
from tests.support.processes import (
    WorkerProcess,
    query,
    scalar,
    seed,
    wait_until,
    workers,
)


def log_events(*procs: WorkerProcess) -> list[dict]:
    events = []
    for proc in procs:
        for line in proc.log_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
    return events


@pytest.fixture
def slow_llm() -> FakeMessagesServer:
    server = FakeMessagesServer(latency_s=0.0)
    server.start()
    yield server
    server.stop()


def llm_env(server: FakeMessagesServer, **extra: str) -> dict[str, str]:
    return {
        "ARTIFACTD_GENERATOR": "anthropic",
        "ANTHROPIC_API_KEY": "sk-test-fleet",
        "ANTHROPIC_BASE_URL": server.base_url,
        **extra,
    }


def test_three_workers__generate_300_rows_each_exactly_once(
    clean_db: str, tmp_path: Path
) -> None:
    ids = seed(clean_db, 300)

    with workers(clean_db, tmp_path, 3, "--drain", ARTIFACTD_CONCURRENCY="16") as procs:
        codes = [p.wait(timeout_s=120) for p in procs]

    assert codes == [0, 0, 0]
    assert query(
        clean_db,
        "SELECT state, attempts, count(*) FROM generated_artifacts GROUP BY 1, 2",
    ) == [("success", 1, 300)]
    succeeded = [
        e["artifact_id"]
        for e in log_events(*procs)
        if e["event"] == "artifact.succeeded"
    ]
    assert sorted(succeeded) == sorted(
        ids
    )  # one success line per row, across all workers
    per_worker = Counter(
        e["worker_id"] for e in log_events(*procs) if e["event"] == "worker.started"
    )
    assert len(per_worker) == 3  # three distinct identities


def test_sigkill_mid_job__another_worker_finishes_the_rows_once(
    clean_db: str, tmp_path: Path, slow_llm: FakeMessagesServer
) -> None:
    slow_llm.latency_s = 2.0
    ids = seed(clean_db, 2)
    env = llm_env(slow_llm, ARTIFACTD_LEASE_S="2", ARTIFACTD_CONCURRENCY="2")
    victim = WorkerProcess(clean_db, tmp_path / "victim.log", **env)
    try:
        wait_until(
            lambda: len(slow_llm.requests) >= 2,
            timeout_s=30,
            message="victim calls the LLM",
        )
        victim_id = scalar(clean_db, "SELECT min(lease_owner) FROM generated_artifacts")
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
    finally:
        victim.kill()
    assert (
        scalar(
            clean_db,
            "SELECT count(*) FROM generated_artifacts WHERE state = 'processing'",
        )
        == 2
    )

    slow_llm.latency_s = 0.0
    rescuer = WorkerProcess(clean_db, tmp_path / "rescuer.log", "--drain", **env)
    try:
        # The lease is 2 s; the rescuer must take over once it expires.
        assert rescuer.wait(timeout_s=60) == 0
    finally:
        rescuer.kill()

    rows = query(
        clean_db,
        "SELECT id::text, state, attempts, metadata->>'worker_id' FROM generated_artifacts",
    )
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1:3] == ("success", 2) for r in rows)
    assert all(r[3] != victim_id for r in rows)
    events = log_events(rescuer)
    assert Counter(e["event"] for e in events)["artifact.reclaimed"] == 2
    assert sorted(
        e["artifact_id"] for e in events if e["event"] == "artifact.succeeded"
    ) == sorted(ids)


def test_sigterm__releases_unfinished_rows_for_the_next_worker(
    clean_db: str, tmp_path: Path, slow_llm: FakeMessagesServer
) -> None:
    slow_llm.latency_s = 60.0
    seed(clean_db, 3)
    env = llm_env(slow_llm, ARTIFACTD_SHUTDOWN_GRACE_S="0.5", ARTIFACTD_CONCURRENCY="3")
    proc = WorkerProcess(clean_db, tmp_path / "worker.log", **env)
    try:
        wait_until(
            lambda: len(slow_llm.requests) >= 3,
            timeout_s=30,
            message="three jobs running",
        )

        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout_s=30)
    finally:
        proc.kill()

    assert code == 0
    rows = query(
        clean_db,
        "SELECT state, lease_token, attempts, run_after <= now() FROM generated_artifacts",
    )
    assert rows == [("processing", None, 0, True)] * 3
    released = [e for e in log_events(proc) if e["event"] == "worker.released"]
    assert [e["count"] for e in released] == [3]


def test_sigterm__lets_running_jobs_finish_within_the_grace_period(
    clean_db: str, tmp_path: Path, slow_llm: FakeMessagesServer
) -> None:
    slow_llm.latency_s = 1.0
    seed(clean_db, 2)
    env = llm_env(slow_llm, ARTIFACTD_SHUTDOWN_GRACE_S="30", ARTIFACTD_CONCURRENCY="2")
    proc = WorkerProcess(clean_db, tmp_path / "worker.log", **env)
    try:
        wait_until(
            lambda: len(slow_llm.requests) >= 2,
            timeout_s=30,
            message="two jobs running",
        )

        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout_s=30)
    finally:
        proc.kill()

    assert code == 0
    assert query(
        clean_db, "SELECT state, count(*) FROM generated_artifacts GROUP BY 1"
    ) == [("success", 2)]


def test_poison_row__ends_worker_lost_after_max_attempts_of_dead_workers(
    clean_db: str, tmp_path: Path, slow_llm: FakeMessagesServer
) -> None:
    slow_llm.latency_s = 60.0
    [poison] = seed(clean_db, 1, max_attempts=2)
    env = llm_env(slow_llm, ARTIFACTD_LEASE_S="1")
    for attempt in (1, 2):
        proc = WorkerProcess(clean_db, tmp_path / f"dying-{attempt}.log", **env)
        try:
            wait_until(
                lambda attempt=attempt: (
                    scalar(clean_db, "SELECT attempts FROM generated_artifacts")
                    == attempt
                    and scalar(
                        clean_db,
                        "SELECT lease_token IS NOT NULL FROM generated_artifacts",
                    )
                ),
                timeout_s=30,
                message=f"attempt {attempt} claimed",
            )
            proc.signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            proc.kill()

    survivor = WorkerProcess(clean_db, tmp_path / "survivor.log", "--drain", **env)
    try:
        assert survivor.wait(timeout_s=60) == 0
    finally:
        survivor.kill()

    state, code, attempts = query(
        clean_db,
        "SELECT state, content->>'error_code', attempts FROM generated_artifacts",
    )[0]
    assert (state, code, attempts) == ("failed", "WORKER_LOST", 2)
    assert scalar(clean_db, "SELECT id::text FROM generated_artifacts") == poison


def test_drain__ends_bad_inputs_with_their_codes_and_exits_zero(
    clean_db: str, tmp_path: Path
) -> None:
    seed(clean_db, 1, transcript="   \n ")
    seed(clean_db, 1, artifact_type="no_such_type")
    import psycopg

    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO generated_artifacts (task_id, artifact_type, state) "
            "VALUES ('missing', 'summary', 'processing')"
        )

    with workers(clean_db, tmp_path, 1, "--drain", ARTIFACTD_GENERATOR="offline") as [
        proc
    ]:
        assert proc.wait(timeout_s=60) == 0

    codes = sorted(
        r[0]
        for r in query(
            clean_db, "SELECT content->>'error_code' FROM generated_artifacts"
        )
    )
    assert codes == ["INPUT_EMPTY", "INPUT_NOT_FOUND", "UNKNOWN_ARTIFACT_TYPE"]
    assert (
        scalar(
            clean_db, "SELECT count(*) FROM generated_artifacts WHERE state <> 'failed'"
        )
        == 0
    )
