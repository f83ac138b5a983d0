"""Faults in the chat robot: down, slow, answering errors, then gone for good.

Notifications are at least once by design (DESIGN.md): a robot that answers
after the notifier gave up on it may see a message twice. The outbox itself
holds exactly one row per final state, and the artifact's state never
depends on delivery.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from tests.fakes.robot_server import (
    FakeRobotServer,
    delayed,
    dropped,
    errcode,
    http_status,
)
from tests.faults.audit import audit
from tests.faults.harness import assert_secret_absent, robot_env
from tests.support.pgserver import free_port
from tests.support.processes import WorkerProcess, query, scalar, seed, wait_until

NOTIFY_TIMEOUT_S = 1.0


def outbox_states(db_url: str) -> dict[str, int]:
    return dict(query(db_url, "SELECT state, count(*) FROM notifications GROUP BY 1"))


def test_robot_down_slow_erroring_then_removed__one_outbox_row_each_and_states_untouched(
    fault_db: str, tmp_path: Path
) -> None:
    """Faults: the robot's port closed (down) while artifacts finish; back
    with HTTP 500s, WeCom 45009 (rate limited), answers slower than the
    notify timeout and a dropped connection; at last removed from its group
    (errcode 93000, permanent)."""
    port = free_port()
    robot = FakeRobotServer(port=port)  # not started yet: the robot is down
    robot_key = "robot-key-" + "faults-webhook"
    env = robot_env(
        robot,
        ARTIFACTD_WECOM_WEBHOOK_URL=robot.wecom_url(robot_key),
        ARTIFACTD_NOTIFY_TIMEOUT_S=str(NOTIFY_TIMEOUT_S),
        ARTIFACTD_NOTIFY_BACKOFF_S="0.2",
        ARTIFACTD_NOTIFY_MAX_ATTEMPTS="20",
    )
    ids = seed(fault_db, 8)
    proc = WorkerProcess(fault_db, tmp_path / "worker.log", **env)
    try:
        # Down: every artifact still succeeds; deliveries fail and wait.
        wait_until(
            lambda: (
                scalar(
                    fault_db, "SELECT count(*) FROM notifications WHERE attempts >= 2"
                )
                == 8
            ),
            timeout_s=60,
            message="two failed deliveries per notification",
        )
        assert query(
            fault_db, "SELECT state, count(*) FROM generated_artifacts GROUP BY 1"
        ) == [("success", 8)]

        # Back, but erroring and slow for a while.
        robot.script(
            http_status(500),
            http_status(503, retry_after=0.5),
            errcode(45009, "api freq out of limit"),
            errcode(45009),
            delayed(3 * NOTIFY_TIMEOUT_S),
            delayed(3 * NOTIFY_TIMEOUT_S),
            dropped(),
        )
        robot.start()
        wait_until(
            lambda: outbox_states(fault_db) == {"sent": 8},
            timeout_s=90,
            message="all eight delivered",
        )

        # Removed from the group: permanent, the notification dies at once.
        robot.remove_robot(robot_key)
        late = seed(fault_db, 2)
        wait_until(
            lambda: outbox_states(fault_db) == {"sent": 8, "dead": 2},
            timeout_s=60,
            message="two notifications dead",
        )
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        robot.stop()

    result = audit(
        fault_db,
        fault="robot down, 5xx, 45009, slow, dropped, then removed (93000)",
        injected=5,
        expected_ids=ids + late,
        logs=[proc.log_path],
    )
    assert result.clean, result.notes
    assert result.states == {"success": 10}
    accepted = Counter(
        artifact_id
        for message in robot.accepted(robot_key)
        for artifact_id in ids + late
        if artifact_id in message.content
    )
    assert set(accepted) == set(ids)
    # Twice only where the robot answered after the notifier had given up.
    slow_answers = 2
    assert sum(accepted.values()) <= len(ids) + slow_answers
    dead_errors = [
        r[0]
        for r in query(
            fault_db, "SELECT last_error FROM notifications WHERE state = 'dead'"
        )
    ]
    assert all("93000" in (error or "") for error in dead_errors)
    assert_secret_absent(robot_key, fault_db, [proc.log_path])
