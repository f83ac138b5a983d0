"""Faults in the workers themselves: killed, frozen past the lease, restarted,
and many started at once against a deep queue."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import datetime
from pathlib import Path

from tests.fakes.messages_server import FakeMessagesServer
from tests.fakes.robot_server import FakeRobotServer
from tests.faults.audit import audit, log_events
from tests.faults.harness import (
    enqueue,
    llm_env,
    logs,
    robot_env,
    secret_key,
    wait_drained,
)
from tests.support.processes import (
    WorkerProcess,
    query,
    scalar,
    seed,
    wait_until,
    workers,
)

LEASE_S = "2"


def _row_snapshot(db_url: str) -> list[tuple]:
    return query(
        db_url,
        """
        SELECT a.id::text, a.state, a.attempts, a.content, a.metadata, a.updated_at,
               a.finished_at, a.lease_token,
               (SELECT count(*) FROM notifications n WHERE n.artifact_id = a.id)
        FROM generated_artifacts a ORDER BY a.id
        """,
    )


def test_sigstop_past_the_lease_then_sigcont__late_worker_changes_nothing(
    fault_db: str, tmp_path: Path, llm: FakeMessagesServer, robot: FakeRobotServer
) -> None:
    """Fault: SIGSTOP a worker mid-generation until its leases expire and
    another worker finishes the rows, then SIGCONT it: its late renewals and
    writes must be refused and change nothing."""
    llm.latency_s = 4.0
    ids = enqueue(fault_db, ["Alice: frozen one.", "Bob: frozen two."])
    env = {
        **llm_env(
            llm, secret_key(), ARTIFACTD_LEASE_S=LEASE_S, ARTIFACTD_CONCURRENCY="2"
        ),
        **robot_env(robot),
    }
    frozen = WorkerProcess(fault_db, tmp_path / "frozen.log", **env)
    try:
        wait_until(
            lambda: len(llm.requests) >= 2, timeout_s=60, message="both rows mid-call"
        )
        frozen_id = scalar(fault_db, "SELECT min(lease_owner) FROM generated_artifacts")
        frozen.signal(signal.SIGSTOP)

        llm.latency_s = 0.0
        rescuer = WorkerProcess(fault_db, tmp_path / "rescuer.log", "--drain", **env)
        try:
            assert rescuer.wait(timeout_s=90) == 0
        finally:
            rescuer.kill()
        before = _row_snapshot(fault_db)

        frozen.signal(signal.SIGCONT)
        wait_until(
            lambda: (
                {
                    e.get("artifact_id")
                    for e in log_events([frozen.log_path])
                    if e["event"] in ("artifact.lease_lost", "artifact.write_refused")
                }
                >= set(ids)
            ),
            timeout_s=60,
            message="the continued worker gives both rows up",
        )
        after = _row_snapshot(fault_db)
        frozen.signal(signal.SIGTERM)
        assert frozen.wait(30) == 0
    finally:
        frozen.kill()

    result = audit(
        fault_db,
        fault="SIGSTOP past the lease, then SIGCONT",
        injected=1,
        expected_ids=ids,
        logs=[frozen.log_path, rescuer.log_path],
    )
    assert result.clean, result.notes
    assert after == before  # the late worker wrote nothing at all
    rows = query(
        fault_db,
        "SELECT state, attempts, metadata->>'worker_id' FROM generated_artifacts",
    )
    assert all(r[0] == "success" and r[1] == 2 and r[2] != frozen_id for r in rows)
    frozen_events = [e["event"] for e in log_events([frozen.log_path])]
    assert "artifact.succeeded" not in frozen_events


def test_sigkill_then_restart_under_the_same_host_name__leases_are_not_adopted(
    fault_db: str, tmp_path: Path, llm: FakeMessagesServer, robot: FakeRobotServer
) -> None:
    """Fault: SIGKILL a worker mid-generation and start its replacement at
    once on the same host. The newcomer shares the host name (and could
    share a recycled pid) but must not take the dead worker's leases as its
    own: it waits for them to expire, then reclaims each row once."""
    llm.latency_s = 60.0
    ids = enqueue(fault_db, [f"Dana: killed {n}." for n in range(3)])
    env = {
        **llm_env(
            llm, secret_key(), ARTIFACTD_LEASE_S=LEASE_S, ARTIFACTD_CONCURRENCY="3"
        ),
        **robot_env(robot),
    }
    victim = WorkerProcess(fault_db, tmp_path / "victim.log", **env)
    try:
        wait_until(
            lambda: len(llm.requests) >= 3, timeout_s=60, message="three rows mid-call"
        )
        victim_id = scalar(fault_db, "SELECT min(lease_owner) FROM generated_artifacts")
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        # Read after the kill: no renewal can move these any more.
        leases = dict(
            query(
                fault_db, "SELECT id::text, lease_expires_at FROM generated_artifacts"
            )
        )
    finally:
        victim.kill()

    llm.latency_s = 0.0
    successor = WorkerProcess(fault_db, tmp_path / "successor.log", "--drain", **env)
    try:
        assert successor.wait(timeout_s=90) == 0
    finally:
        successor.kill()

    result = audit(
        fault_db,
        fault="SIGKILL, restart under the same host name",
        injected=1,
        expected_ids=ids,
        logs=[victim.log_path, successor.log_path],
    )
    assert result.clean, result.notes
    events = log_events([successor.log_path])
    [started] = [e for e in events if e["event"] == "worker.started"]
    successor_id = started["worker_id"]
    assert successor_id != victim_id
    assert successor_id.split(":")[0] == victim_id.split(":")[0]  # same host name
    reclaimed = [e for e in events if e["event"] == "artifact.reclaimed"]
    assert sorted(e["artifact_id"] for e in reclaimed) == sorted(ids)
    assert {e["previous_owner"] for e in reclaimed} == {victim_id}
    for event in reclaimed:
        # Taken over only once the dead worker's lease had run out.
        assert (
            datetime.fromisoformat(event["timestamp"]) >= leases[event["artifact_id"]]
        )
    rows = query(fault_db, "SELECT state, attempts FROM generated_artifacts")
    assert rows == [("success", 2)] * 3


def test_six_workers_started_at_once_on_2000_rows__each_row_once(
    fault_db: str, tmp_path: Path
) -> None:
    """Fault: a thundering herd, six worker processes started together on a
    queue 2,000 rows deep, all claiming from the same head of the queue."""
    ids = seed(fault_db, 2000, artifact_type="summary")
    env = {
        # Outbox rows are written for the channel; nobody needs to deliver.
        "ARTIFACTD_WECOM_WEBHOOK_URL": "http://127.0.0.1:9/cgi-bin/webhook/send?key=herd",
        "ARTIFACTD_WORKER_NOTIFIER": "false",
        "ARTIFACTD_CONCURRENCY": "8",
    }

    with workers(fault_db, tmp_path, 6, "--drain", **env) as procs:
        codes = wait_drained(procs, timeout_s=180)

    result = audit(
        fault_db,
        fault="6 workers started at once on 2,000 rows",
        injected=1,
        expected_ids=ids,
        logs=logs(procs),
    )
    assert result.clean, result.notes
    assert codes == [0] * 6
    assert query(
        fault_db,
        "SELECT state, attempts, count(*) FROM generated_artifacts GROUP BY 1, 2",
    ) == [("success", 1, 2000)]
    succeeded = Counter(
        e["artifact_id"]
        for e in log_events(logs(procs))
        if e["event"] == "artifact.succeeded"
    )
    assert set(succeeded) == set(ids) and set(succeeded.values()) == {1}
