"""Operator actions in ``shared.ops`` on a real PostgreSQL.

Requeue, cancel, stats and prune, called as the CLI and the API call them:
plain functions over a psycopg connection.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import structlog
from click.testing import CliRunner, Result
from psycopg.rows import dict_row

from shared import ops, queue
from shared.repository import update_content_and_state
from tests.support.processes import query, seed
from worker.cli import main

TASK_ID = "ops-task"


@pytest.fixture
def conn(clean_db: str) -> Iterator[psycopg.Connection]:
    """Like the shared ``conn`` (rolled back after the test), on an emptied
    database: whole-table numbers (stats, prune) must not see other tests'
    committed rows.
    """
    with psycopg.connect(clean_db) as connection:
        yield connection
        connection.rollback()


def add_artifact(
    conn: psycopg.Connection,
    state: str,
    *,
    error_code: str | None = None,
    artifact_type: str = "meeting_minutes",
    finished_ago_s: float | None = 60.0,
    duration_s: float = 2.0,
    attempts: int = 1,
) -> str:
    """One artifact row in ``state``; finished ones get times in the past."""
    conn.execute(
        "INSERT INTO tasks (id, name, transcript) VALUES (%s, 'ops', 'A: hi.') "
        "ON CONFLICT DO NOTHING",
        (TASK_ID,),
    )
    content = {"error_code": error_code, "error_message": "x", "hint": "y"}
    if state == "success":
        content = {"format": "markdown", "text": "# done"}
    finished = state != "processing" and finished_ago_s is not None
    row = conn.execute(
        """
        INSERT INTO generated_artifacts
            (task_id, artifact_type, state, content, attempts, created_at,
             started_at, finished_at)
        VALUES (%(task)s, %(type)s, %(state)s, %(content)s, %(attempts)s,
                now() - make_interval(secs => %(ago)s + %(duration)s + 1),
                CASE WHEN %(finished)s
                     THEN now() - make_interval(secs => %(ago)s + %(duration)s) END,
                CASE WHEN %(finished)s THEN now() - make_interval(secs => %(ago)s) END)
        RETURNING id::text
        """,
        {
            "task": TASK_ID,
            "type": artifact_type,
            "state": state,
            "content": None if state == "processing" else json.dumps(content),
            "attempts": attempts,
            "ago": finished_ago_s or 0.0,
            "duration": duration_s,
            "finished": finished,
        },
    ).fetchone()
    assert row is not None
    return str(row[0])


def artifact(conn: psycopg.Connection, artifact_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM generated_artifacts WHERE id = %s", (artifact_id,))
        row = cur.fetchone()
    assert row is not None
    return row


def claim_one(conn: psycopg.Connection) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            queue.CLAIM_BATCH, {"limit": 1, "worker_id": "w-test", "lease_s": 60}
        )
        rows = cur.fetchall()
    assert len(rows) == 1
    return rows[0]


# -- requeue ----------------------------------------------------------------


def test_requeue_by_ids__resets_attempts_and_keeps_the_failure(
    conn: psycopg.Connection,
) -> None:
    failed = add_artifact(conn, "failed", error_code="LLM_AUTH_FAILED", attempts=3)

    report = ops.requeue_by_ids(conn, [failed])

    row = artifact(conn, failed)
    assert report.requeued == [failed] and report.refused == []
    assert (row["state"], row["attempts"], row["content"]) == ("processing", 0, None)
    assert row["started_at"] is None and row["finished_at"] is None
    [previous] = row["metadata"]["previous_failures"]
    assert previous["error_code"] == "LLM_AUTH_FAILED"
    assert previous["attempts"] == 3
    assert previous["finished_at"] is not None


def test_requeue_by_ids__refuses_each_row_that_is_not_failed_with_the_reason(
    conn: psycopg.Connection,
) -> None:
    success = add_artifact(conn, "success")
    processing = add_artifact(conn, "processing")
    other_code = add_artifact(conn, "failed", error_code="OUTPUT_INVALID")
    wanted = add_artifact(conn, "failed", error_code="LLM_AUTH_FAILED")
    unknown = "00000000-0000-4000-8000-000000000000"
    where = ops.RequeueFilter(error_code="LLM_AUTH_FAILED")

    report = ops.requeue_by_ids(
        conn, [success, processing, other_code, wanted, unknown, "nope"], where=where
    )

    reasons = {r.artifact_id: (r.state, r.reason) for r in report.refused}
    assert report.requeued == [wanted]
    assert reasons[success][0] == "success" and "succeeded" in reasons[success][1]
    assert reasons[processing][0] == "processing"
    assert "still processing" in reasons[processing][1]
    assert reasons[other_code] == (
        "failed",
        "failed with OUTPUT_INVALID, not LLM_AUTH_FAILED",
    )
    assert reasons[unknown] == (None, "no such artifact")
    assert reasons["nope"] == (None, "not an artifact id (a UUID)")
    assert artifact(conn, success)["state"] == "success"
    assert artifact(conn, other_code)["state"] == "failed"


def test_requeue_by_ids__dry_run_changes_nothing(conn: psycopg.Connection) -> None:
    failed = add_artifact(conn, "failed", error_code="LLM_TIMEOUT")
    before = artifact(conn, failed)

    report = ops.requeue_by_ids(conn, [failed], dry_run=True)

    assert report.matched == 1 and report.requeued == []
    assert [p["id"] for p in report.preview] == [failed]
    assert artifact(conn, failed) == before


def test_requeue_matching__selects_by_code_type_and_age(
    conn: psycopg.Connection,
) -> None:
    old_auth = add_artifact(
        conn, "failed", error_code="LLM_AUTH_FAILED", finished_ago_s=7200
    )
    add_artifact(conn, "failed", error_code="LLM_AUTH_FAILED", finished_ago_s=60)
    add_artifact(
        conn,
        "failed",
        error_code="LLM_AUTH_FAILED",
        finished_ago_s=7200,
        artifact_type="summary",
    )
    add_artifact(conn, "failed", error_code="OUTPUT_INVALID", finished_ago_s=7200)
    where = ops.RequeueFilter("LLM_AUTH_FAILED", "meeting_minutes", older_than_s=3600)

    dry = ops.requeue_matching(conn, where, dry_run=True)
    real = ops.requeue_matching(conn, where)

    assert (dry.matched, [p["id"] for p in dry.preview], dry.requeued) == (
        1,
        [old_auth],
        [],
    )
    assert real.requeued == [old_auth]
    assert (
        scalar_in(
            conn, "SELECT count(*) FROM generated_artifacts WHERE state = 'failed'"
        )
        == 3
    )


def test_requeue_matching__goes_in_batches_and_honours_the_limit(
    conn: psycopg.Connection,
) -> None:
    ids = [add_artifact(conn, "failed", error_code="LLM_TIMEOUT") for _ in range(7)]

    limited = ops.requeue_matching(conn, ops.RequeueFilter(), limit=2, batch_size=10)
    rest = ops.requeue_matching(conn, ops.RequeueFilter(), batch_size=2)

    assert len(limited.requeued) == 2
    assert len(rest.requeued) == 5
    assert sorted(limited.requeued + rest.requeued) == sorted(ids)


def test_requeue__wakes_listening_workers(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        failed = add_artifact(conn, "failed", error_code="LLM_AUTH_FAILED")
    with psycopg.connect(clean_db, autocommit=True) as listener:
        listener.execute(f"LISTEN {queue.NEW_CHANNEL}")

        with psycopg.connect(clean_db, autocommit=True) as conn:
            ops.requeue_by_ids(conn, [failed])
        channels = [n.channel for n in listener.notifies(timeout=5.0, stop_after=1)]

    assert channels == [queue.NEW_CHANNEL]


# -- cancel -----------------------------------------------------------------


def test_cancel__fails_running_and_waiting_rows_and_fences_the_worker(
    clean_db: str,
) -> None:
    ids = seed(clean_db, 2)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        claimed = claim_one(conn)
        running = claimed["id"]
        [waiting] = [i for i in ids if i != running]

        report = ops.cancel_artifacts(
            conn, [running, waiting], locale="en", channels=["wecom"]
        )
        late = update_content_and_state(
            conn,
            running,
            claimed["lease_token"],
            state="success",
            content={"text": "late"},
        )

    by_id = {c.artifact_id: c for c in report.cancelled}
    assert set(by_id) == {running, waiting} and report.refused == []
    assert by_id[running].was_running and by_id[running].lease_owner == "w-test"
    assert not by_id[waiting].was_running
    assert late is False
    rows = query(
        clean_db,
        "SELECT state, content->>'error_code', lease_token FROM generated_artifacts",
    )
    assert rows == [("failed", "CANCELLED", None)] * 2
    assert (
        query(clean_db, "SELECT event, channel, state FROM notifications")
        == [("failed", "wecom", "pending")] * 2
    )


def test_cancel__refuses_finished_and_unknown_rows(conn: psycopg.Connection) -> None:
    success = add_artifact(conn, "success")
    failed = add_artifact(conn, "failed", error_code="LLM_TIMEOUT")
    unknown = "00000000-0000-4000-8000-000000000001"

    report = ops.cancel_artifacts(conn, [success, failed, unknown], locale="en")

    assert report.cancelled == []
    assert {(r.artifact_id, r.state) for r in report.refused} == {
        (success, "success"),
        (failed, "failed"),
        (unknown, None),
    }
    assert artifact(conn, failed)["content"]["error_code"] == "LLM_TIMEOUT"


# -- stats ------------------------------------------------------------------


def test_queue_stats__reports_depth_outcomes_durations_and_notifications(
    conn: psycopg.Connection,
) -> None:
    for _ in range(3):
        add_artifact(conn, "processing")
    claim_one(conn)
    for seconds in (1.0, 2.0, 3.0, 4.0):
        add_artifact(conn, "success", duration_s=seconds)
    first_fail = add_artifact(conn, "failed", error_code="LLM_AUTH_FAILED")
    add_artifact(conn, "failed", error_code="LLM_AUTH_FAILED", artifact_type="summary")
    add_artifact(conn, "success", finished_ago_s=7200)  # outside the window
    conn.execute(
        "INSERT INTO notifications (artifact_id, event, channel, state, sent_at) "
        "VALUES (%(id)s, 'failed', 'wecom', 'pending', NULL), "
        "(%(id)s, 'failed', 'wecom', 'dead', NULL), "
        "(%(id)s, 'failed', 'wecom', 'sent', now())",
        {"id": first_fail},
    )

    stats = ops.queue_stats(conn, since_s=3600)

    depth = stats["queue"]
    assert (depth["processing"], depth["in_flight"], depth["waiting"]) == (3, 1, 2)
    assert depth["ready"] == 2 and depth["oldest_waiting_s"] > 0
    minutes = next(
        o for o in stats["outcomes"] if o["artifact_type"] == "meeting_minutes"
    )
    assert (minutes["succeeded"], minutes["failed"]) == (4, 1)
    assert minutes["p50_ms"] == pytest.approx(2500, abs=5)
    assert minutes["p95_ms"] == pytest.approx(3850, abs=5)
    assert (stats["totals"]["succeeded"], stats["totals"]["failed"]) == (4, 2)
    assert {
        (e["error_code"], e["artifact_type"], e["count"]) for e in stats["errors"]
    } == {
        ("LLM_AUTH_FAILED", "meeting_minutes", 1),
        ("LLM_AUTH_FAILED", "summary", 1),
    }
    [wecom] = stats["notifications"]
    assert (wecom["pending"], wecom["sent"], wecom["dead"]) == (1, 1, 1)


# -- prune ------------------------------------------------------------------


def test_prune__deletes_only_old_finished_rows_in_bounded_batches(
    conn: psycopg.Connection,
) -> None:
    day_s = 86_400
    old = [add_artifact(conn, "success", finished_ago_s=40 * day_s) for _ in range(23)]
    old.append(
        add_artifact(
            conn, "failed", error_code="LLM_TIMEOUT", finished_ago_s=40 * day_s
        )
    )
    recent = add_artifact(conn, "success", finished_ago_s=day_s)
    running = add_artifact(conn, "processing")
    undelivered = add_artifact(
        conn, "failed", error_code="CANCELLED", finished_ago_s=40 * day_s
    )
    recent_sent = add_artifact(conn, "success", finished_ago_s=day_s)
    conn.execute(
        "INSERT INTO notifications (artifact_id, event, channel, state, sent_at) VALUES "
        "(%(undelivered)s, 'failed', 'wecom', 'pending', NULL), "
        "(%(recent)s, 'success', 'wecom', 'sent', now() - interval '40 days'), "
        "(%(recent)s, 'success', 'wecom', 'sent', now())",
        {"undelivered": undelivered, "recent": recent_sent},
    )
    legacy = conn.execute(
        "INSERT INTO generated_artifacts (task_id, artifact_type, created_at, updated_at) "
        "VALUES (%s, 'summary', now() - interval '400 days', now() - interval '400 days') "
        "RETURNING id::text",
        (TASK_ID,),
    ).fetchone()[0]

    dry = ops.prune(conn, older_than_s=30 * day_s, dry_run=True)
    report = ops.prune(conn, older_than_s=30 * day_s, batch_size=10)

    assert (dry.artifacts, dry.notifications) == (24, 1)
    assert (report.artifacts, report.notifications) == (24, 1)
    assert report.batches == 1 + 3  # one short notification batch; 10 + 10 + 4
    left = {r[0] for r in conn.execute("SELECT id::text FROM generated_artifacts")}
    assert left == {recent, running, undelivered, recent_sent, legacy}
    assert scalar_in(conn, "SELECT count(*) FROM notifications") == 2


def test_prune__dry_run_deletes_nothing_and_state_narrows(
    conn: psycopg.Connection,
) -> None:
    add_artifact(conn, "success", finished_ago_s=3 * 86_400)
    failed = add_artifact(
        conn, "failed", error_code="LLM_TIMEOUT", finished_ago_s=3 * 86_400
    )

    dry = ops.prune(conn, older_than_s=86_400, states=["failed"], dry_run=True)
    count_after_dry = scalar_in(conn, "SELECT count(*) FROM generated_artifacts")
    real = ops.prune(conn, older_than_s=86_400, states=["failed"])

    assert dry.artifacts == 1 and count_after_dry == 2
    assert real.artifacts == 1
    assert (
        scalar_in(
            conn, "SELECT count(*) FROM generated_artifacts WHERE id = %s", (failed,)
        )
        == 0
    )


def test_prune__refuses_processing_as_a_state(conn: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="only finished states"):
        ops.prune(conn, older_than_s=60, states=["processing"])


def test_format_age__uses_at_most_two_units() -> None:
    assert [ops.format_age(s) for s in (0, 59, 90, 3600, 93_600, 30 * 86_400)] == [
        "0s",
        "59s",
        "1m30s",
        "1h",
        "1d2h",
        "30d",
    ]


def scalar_in(conn: psycopg.Connection, sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


# -- the CLI over these functions, in process ----------------------------------
# Option parsing, rendering and exit codes, run through click's test runner
# against the same database. The installed script is exercised end to end in
# tests/acceptance/test_operator_cli.py; here a call costs no interpreter start.


@pytest.fixture
def cli(clean_db: str) -> Iterator[Callable[..., Result]]:
    runner = CliRunner(
        env={
            "ARTIFACTD_DATABASE_URL": clean_db,
            "ARTIFACTD_LOG_FORMAT": "json",
            "ARTIFACTD_LOG_LEVEL": "error",
            "ANTHROPIC_API_KEY": None,
            "ARTIFACTD_GENERATOR": None,
        }
    )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def invoke(*args: str, **env: str) -> Result:
        return runner.invoke(main, list(args), env=env or None)

    yield invoke
    root.handlers[:] = handlers
    root.setLevel(level)
    # The commands configured structlog for this process (level "error");
    # later tests capture warnings, so put the defaults back.
    structlog.reset_defaults()


def test_cli_list_and_show__filter_print_json_and_explain_errors(
    clean_db: str, cli: Callable[..., Result]
) -> None:
    recent = seed(clean_db, 2, artifact_type="summary")
    [old] = seed(clean_db, 1, created_at="2020-01-01T00:00:00Z")
    old_task = query(
        clean_db, "SELECT task_id FROM generated_artifacts WHERE id = %s", (old,)
    )[0][0]

    by_type = json.loads(cli("list", "--type", "summary", "--json").stdout)
    older = json.loads(cli("list", "--older-than", "30d", "--json").stdout)
    by_task = json.loads(cli("list", "--task", old_task, "--json").stdout)
    table = cli("list", "--state", "processing")
    shown = json.loads(cli("show", old, "--json").stdout)
    unknown_type = cli("list", "--type", "minutes_of_doom")
    mixed = cli("list", "--state", "success", "--error-code", "llm_timeout")
    missing = cli("show", "00000000-0000-4000-8000-0000000000bb")
    malformed = cli("show", "not-an-id")

    assert sorted(r["id"] for r in by_type) == sorted(recent)
    assert [r["id"] for r in older] == [old] and [r["id"] for r in by_task] == [old]
    assert older[0]["notifications"] == []
    assert table.exit_code == 0 and all(i in table.stdout for i in [*recent, old])
    assert shown["id"] == old and shown["state"] == "processing"
    assert shown["notifications"] == []
    assert unknown_type.exit_code == 2 and "known: " in unknown_type.stderr
    assert mixed.exit_code == 2 and "failed artifacts only" in mixed.stderr
    assert missing.exit_code == 1 and "no artifact with id" in missing.stderr
    assert malformed.exit_code == 2 and "not an artifact id" in malformed.stderr


def test_cli_requeue__names_each_refused_row_and_exits_1(
    clean_db: str, cli: Callable[..., Result]
) -> None:
    [pending] = seed(clean_db, 1)
    unknown = "00000000-0000-4000-8000-0000000000aa"

    refused = cli("requeue", pending, unknown)
    no_selection = cli("requeue")

    assert refused.exit_code == 1
    assert f"refused {pending} (processing): still processing" in refused.stderr
    assert f"refused {unknown}: no such artifact" in refused.stderr
    assert "requeued 0 of 2 named artifact(s)" in refused.stdout
    assert no_selection.exit_code == 2 and "--state failed" in no_selection.stderr
    assert query(clean_db, "SELECT state, attempts FROM generated_artifacts") == [
        ("processing", 0)
    ]


def test_cli_cancel__refuses_a_finished_row_and_exits_1(
    clean_db: str, cli: Callable[..., Result]
) -> None:
    [artifact_id] = seed(clean_db, 1)

    first = cli("cancel", artifact_id)
    again = cli("cancel", artifact_id, "--json")

    assert first.exit_code == 0 and "cancelled 1 artifact(s)" in first.stdout
    assert again.exit_code == 1
    assert json.loads(again.stdout)["refused"][0]["state"] == "failed"
    assert "already finished as failed" in again.stderr


def test_cli_prune__wants_a_unit_on_the_age(cli: Callable[..., Result]) -> None:
    bare = cli("prune", "--older-than", "30")
    garbled = cli("prune", "--older-than", "soon")

    assert bare.exit_code == 2 and "needs a unit, e.g. 30d" in bare.stderr
    assert garbled.exit_code == 2 and "not a duration" in garbled.stderr


def test_cli_stats__prints_tables_for_people(
    clean_db: str, cli: Callable[..., Result]
) -> None:
    seed(clean_db, 2)

    result = cli("stats", "--since", "15m")

    assert result.exit_code == 0, result.output
    assert "waiting (queue depth)" in result.stdout
    assert "finished in the last 15m" in result.stdout


def test_cli_doctor__reports_a_dead_database_and_a_bad_setting(
    cli: Callable[..., Result],
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    no_database = cli(
        "doctor",
        "--json",
        ARTIFACTD_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/nothing",
    )
    bad_setting = cli("doctor", ARTIFACTD_LEASE_S="soon")

    checks = {c["name"]: c for c in json.loads(no_database.stdout)["checks"]}
    assert no_database.exit_code == 1
    assert checks["database"]["status"] == "fail" and checks["database"]["action"]
    assert checks["schema"]["status"] == "skip"
    assert checks["llm"]["status"] == "skip"
    assert bad_setting.exit_code == 1
    assert "ARTIFACTD_LEASE_S" in bad_setting.stdout
