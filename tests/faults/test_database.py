"""Faults in PostgreSQL itself: restarts, outages, killed connections, PgBouncer.

Each test runs on the suite's own server (``pg_server``), never the shared
one, since it restarts, stops or cuts it.
"""

from __future__ import annotations

import functools
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fakes.messages_server import FakeMessagesServer
from tests.fakes.robot_server import FakeRobotServer
from tests.faults.audit import audit, log_events
from tests.faults.harness import (
    enqueue,
    finished,
    llm_env,
    logs,
    robot_env,
    secret_key,
    wait_drained,
    wait_finished,
)
from tests.support.pgserver import PgBouncer, PgServer, pgbouncer_binary
from tests.support.processes import (
    query,
    scalar,
    seed,
    wait_until,
    workers,
)

LEASE_S = 2.0


def errors_recorded(db_url: str) -> Counter[str]:
    """Error codes in every artifact's attempt history (metadata.errors)."""
    rows = query(
        db_url,
        "SELECT e->>'error_code' FROM generated_artifacts, "
        "jsonb_array_elements(coalesce(metadata->'errors', '[]')) AS e",
    )
    return Counter(code for (code,) in rows)


def test_database_restarted_fast_immediate_and_down_past_the_lease__every_artifact_once(
    pg_server: PgServer,
    fault_db: str,
    tmp_path: Path,
    llm: FakeMessagesServer,
    robot: FakeRobotServer,
) -> None:
    """Fault: ``pg_ctl restart -m fast``, then ``-m immediate``, then the
    server stopped for twice the lease and started again, each while two
    workers have jobs in flight (claiming, renewing, writing)."""
    llm.latency_s = 1.0  # long enough for renewals and progress writes
    ids = enqueue(fault_db, [f"Alice: item {n}.\nBob: agreed." for n in range(150)])
    env = {
        **llm_env(llm, secret_key()),
        **robot_env(robot),
        "ARTIFACTD_LEASE_S": str(LEASE_S),
        "ARTIFACTD_CONCURRENCY": "6",
        "ARTIFACTD_POLL_INTERVAL_S": "1",
    }

    with workers(fault_db, tmp_path, 2, "--drain", **env) as procs:
        wait_finished(fault_db, 20)
        in_flight_at_fault = []
        in_flight_at_fault.append(_leased(fault_db))
        pg_server.restart("fast")
        wait_finished(fault_db, 60)
        in_flight_at_fault.append(_leased(fault_db))
        pg_server.restart("immediate")
        wait_finished(fault_db, 100)
        in_flight_at_fault.append(_leased(fault_db))
        pg_server.stop("fast")
        time.sleep(2 * LEASE_S)  # the outage itself: every lease runs out meanwhile
        pg_server.start()
        codes = wait_drained(procs, timeout_s=150)

    result = audit(
        fault_db,
        fault="database restarted (fast, immediate) and down 2x the lease",
        injected=3,
        expected_ids=ids,
        logs=logs(procs),
    )
    assert result.clean, result.notes
    assert codes == [0, 0]
    assert result.states == {"success": 150}
    assert all(n > 0 for n in in_flight_at_fault)  # each fault hit running jobs
    # A restart costs no attempt of its own: the job goes on, its writes wait
    # for the server. Only a lease that ran out during the outage may.
    assert "INTERNAL_ERROR" not in errors_recorded(fault_db)
    for proc in procs:
        connected = [
            e for e in log_events([proc.log_path]) if e["event"] == "listener.connected"
        ]
        assert len(connected) >= 2, "the listener did not come back after a restart"


def _new_listener(server: PgServer, db_url: str, before: set[int]) -> set[int]:
    return server.listening_pids(db_url) - before


def _leased(db_url: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(*) FROM generated_artifacts "
            "WHERE state = 'processing' AND lease_token IS NOT NULL",
        )
    )


def test_worker_connections_terminated_by_the_server__work_goes_on(
    pg_server: PgServer,
    fault_db: str,
    tmp_path: Path,
    llm: FakeMessagesServer,
    robot: FakeRobotServer,
) -> None:
    """Fault: ``pg_terminate_backend`` on every connection of the workers
    (pool and listener), four times while they drain."""
    llm.latency_s = 0.5
    ids = enqueue(fault_db, [f"Carol: point {n}." for n in range(100)])
    env = {
        **llm_env(llm, secret_key()),
        **robot_env(robot),
        "ARTIFACTD_LEASE_S": str(LEASE_S),
        "ARTIFACTD_CONCURRENCY": "6",
    }

    terminated = []
    with workers(fault_db, tmp_path, 2, "--drain", **env) as procs:
        for round_number in range(1, 5):
            wait_finished(fault_db, 20 * round_number)
            terminated.append(pg_server.terminate_backends(fault_db))
        codes = wait_drained(procs, timeout_s=120)

    result = audit(
        fault_db,
        fault="worker connections killed by pg_terminate_backend (x4)",
        injected=len(terminated),
        expected_ids=ids,
        logs=logs(procs),
    )
    assert result.clean, result.notes
    assert codes == [0, 0]
    assert result.states == {"success": 100}
    assert all(n > 0 for n in terminated)
    assert "INTERNAL_ERROR" not in errors_recorded(fault_db)


def test_listening_connection_lost__worker_listens_again_and_wakes_on_notify(
    pg_server: PgServer, fault_db: str, tmp_path: Path
) -> None:
    """Fault: the worker's LISTEN connection terminated from the server.

    Polling is set to ten minutes, so a row inserted after the fault is
    picked up within the wait below only if the worker listens again.
    """
    env = {"ARTIFACTD_POLL_INTERVAL_S": "600", "ARTIFACTD_LEASE_S": "30"}
    with workers(fault_db, tmp_path, 1, **env) as [proc]:
        wait_until(
            lambda: pg_server.listening_pids(fault_db),
            timeout_s=60,
            message="worker listens",
        )
        before = pg_server.listening_pids(fault_db)
        seed(fault_db, 1)  # a wake-up through the first connection
        wait_finished(fault_db, 1, timeout_s=30)

        injected = 0
        for _ in range(2):  # twice: the second drop must be survived as well
            assert pg_server.terminate_backends(fault_db, listening=True) >= 1
            injected += 1
            wait_until(
                functools.partial(_new_listener, pg_server, fault_db, before),
                timeout_s=30,
                message="a new LISTEN connection",
            )
            before = pg_server.listening_pids(fault_db)
            done = finished(fault_db)
            seed(fault_db, 1)
            wait_finished(fault_db, done + 1, timeout_s=30)

        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    events = log_events([proc.log_path])
    names = [e["event"] for e in events]
    result = audit(
        fault_db,
        fault="LISTEN connection terminated (x2)",
        injected=injected,
        logs=[proc.log_path],
        channels=(),
    )
    assert result.clean, result.notes
    assert result.states == {"success": 3}
    assert names.count("listener.disconnected") == 2
    assert names.count("listener.connected") == 3


@pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed")
def test_pgbouncer_transaction_mode__workers_drain_and_listen_direct(
    pg_server: PgServer, fault_db: str, tmp_path: Path, robot: FakeRobotServer
) -> None:
    """Fault: PgBouncer in transaction mode between the workers and the
    database (each statement may run on another server connection), with
    ``ARTIFACTD_LISTEN_URL`` straight at the server; PgBouncer's server
    connections are then terminated once mid-drain."""
    binary = pgbouncer_binary()
    assert binary is not None
    database = fault_db.rsplit("/", 1)[1]
    bouncer = PgBouncer(pg_server, binary)
    try:
        bouncer.wait_ready(database)
        ids = seed(fault_db, 600)
        env = {
            **robot_env(robot),
            "ARTIFACTD_LISTEN_URL": fault_db,
            "ARTIFACTD_CONCURRENCY": "16",
            "ARTIFACTD_FLEET_CONCURRENCY": "20",  # the advisory-lock claim path too
            "ARTIFACTD_POLL_INTERVAL_S": "600",
        }
        with workers(bouncer.url(database), tmp_path, 2, **env) as procs:
            wait_finished(fault_db, 200, timeout_s=90)
            killed = pg_server.terminate_backends(fault_db, listening=False)
            wait_finished(fault_db, 600, timeout_s=90)
            # Idle now, polling every ten minutes: only NOTIFY on the direct
            # connection can bring the next row in time.
            more = seed(fault_db, 5)
            wait_finished(fault_db, 605, timeout_s=30)
            for proc in procs:
                proc.signal(signal.SIGTERM)
            codes = [proc.wait(30) for proc in procs]
    finally:
        bouncer.stop()

    result = audit(
        fault_db,
        fault="PgBouncer (transaction mode) + its server connections killed",
        injected=2,
        expected_ids=ids + more,
        logs=logs(procs),
    )
    assert result.clean, result.notes
    assert codes == [0, 0]
    assert killed > 0
    for proc in procs:
        assert "prepared statement" not in proc.log_text()
    assert result.states == {"success": 605}
