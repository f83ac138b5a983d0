"""The schema history: from the pre-async shape to the queue, on real data."""

from __future__ import annotations

import psycopg
import pytest

from shared.schema import current_revision, head_revision, migrate
from tests.support.processes import query, scalar


def test_upgrade_from_pre_async__existing_rows_read_as_success(empty_db: str) -> None:
    migrate(empty_db, "0001_pre_async")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, transcript) VALUES ('t1', 'old', 'A: hi')"
        )
        conn.execute(
            "INSERT INTO generated_artifacts (task_id, artifact_type, version, content) "
            "SELECT 't1', 'meeting_minutes', v, jsonb_build_object('text', 'minutes v' || v) "
            "FROM generate_series(1, 3) AS v"
        )

    before, after = migrate(empty_db)

    assert (before, after) == ("0001_pre_async", head_revision())
    rows = query(
        empty_db,
        "SELECT version, state, content->>'text', attempts, lease_token, "
        "finished_at = updated_at FROM generated_artifacts ORDER BY version",
    )
    assert rows == [
        (1, "success", "minutes v1", 0, None, True),
        (2, "success", "minutes v2", 0, None, True),
        (3, "success", "minutes v3", 0, None, True),
    ]
    # Upgraded rows are finished, so no worker claims them.
    claimable = scalar(
        empty_db, "SELECT count(*) FROM generated_artifacts WHERE state = 'processing'"
    )
    assert claimable == 0


def test_upgrade__plain_insert_with_two_columns_enqueues_work(empty_db: str) -> None:
    migrate(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, transcript) VALUES ('t1', 'n', 'A: hi')"
        )
        conn.execute(
            "INSERT INTO generated_artifacts (task_id, artifact_type, state) "
            "VALUES ('t1', 'summary', 'processing'), ('t1', 'summary', 'processing')"
        )

    rows = query(
        empty_db,
        "SELECT version, state, attempts, max_attempts, priority, metadata "
        "FROM generated_artifacts ORDER BY version",
    )

    assert [r[0] for r in rows] == [1, 2]  # the trigger assigns the next version
    assert all(r[1:] == ("processing", 0, 5, 0, {}) for r in rows)


def test_upgrade__insert_of_processing_row_notifies_listeners(empty_db: str) -> None:
    migrate(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as listener:
        listener.execute("LISTEN artifactd_new")
        with psycopg.connect(empty_db, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO tasks (id, name, transcript) VALUES ('t1', 'n', 'x')"
            )
            conn.execute(
                "INSERT INTO generated_artifacts (task_id, artifact_type, state) "
                "VALUES ('t1', 'summary', 'processing')"
            )

        channels = [n.channel for n in listener.notifies(timeout=5, stop_after=1)]

    assert channels == ["artifactd_new"]


def test_downgrade_and_upgrade_again__round_trips(empty_db: str) -> None:
    migrate(empty_db)
    from alembic import command

    from shared.schema import alembic_config

    command.downgrade(alembic_config(empty_db), "0001_pre_async")
    assert current_revision(empty_db) == "0001_pre_async"

    migrate(empty_db)

    assert current_revision(empty_db) == head_revision()


def test_migrate__is_idempotent(empty_db: str) -> None:
    migrate(empty_db)

    before, after = migrate(empty_db)

    assert before == after == head_revision()


@pytest.mark.parametrize(
    "column", ["state", "lease_token", "run_after", "idempotency_key"]
)
def test_head__has_queue_columns(db_url: str, column: str) -> None:
    found = scalar(
        db_url,
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'generated_artifacts' AND column_name = %s",
        (column,),
    )
    assert found == 1
