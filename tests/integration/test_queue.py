"""The queue's statements on a real PostgreSQL: claims, leases, fences, retries."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared import queue
from shared.errors import ErrorCode, error_content
from shared.repository import (
    NewTask,
    create,
    create_placeholder,
    create_task,
    get_status,
    update_content_and_state,
)
from tests.support.processes import query, scalar, seed
from worker.claimer import Claimer


def claim(
    url: str,
    limit: int,
    worker_id: str = "w1",
    lease_s: float = 30.0,
    cap: int | None = None,
) -> list[dict]:
    params = {"limit": limit, "worker_id": worker_id, "lease_s": lease_s}
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            if cap is not None:
                conn.execute(queue.LOCK_FLEET_CLAIMS)
                params["fleet_cap"] = cap
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            cur.execute(
                queue.CLAIM_BATCH_CAPPED if cap is not None else queue.CLAIM_BATCH,
                params,
            )
            return cur.fetchall()


def expire_leases(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE generated_artifacts SET lease_expires_at = now() - interval '1 second' "
            "WHERE lease_token IS NOT NULL"
        )


def test_claim__skips_rows_locked_by_another_worker(clean_db: str) -> None:
    ids = seed(clean_db, 4)
    with psycopg.connect(clean_db) as other:
        other.execute(
            "SELECT id FROM generated_artifacts WHERE id = ANY(%s::uuid[]) FOR UPDATE",
            (ids[:2],),
        )

        claimed = claim(clean_db, 10)

        other.rollback()
    assert sorted(r["id"] for r in claimed) == sorted(ids[2:])


def test_claim__orders_by_priority_then_age(clean_db: str) -> None:
    low = seed(clean_db, 2, priority=0)
    high = seed(clean_db, 1, priority=10)

    claimed = claim(clean_db, 2)

    assert [r["id"] for r in claimed] == [high[0], low[0]]


def test_claim__sets_lease_and_counts_attempt_and_joins_task(clean_db: str) -> None:
    seed(clean_db, 1, transcript="Alice: 你好")

    [row] = claim(clean_db, 5, worker_id="host:1:abc")

    assert row["attempts"] == 1
    assert row["task_exists"] and row["transcript"] == "Alice: 你好"
    owner, expires_in = query(
        clean_db,
        "SELECT lease_owner, extract(epoch FROM lease_expires_at - now()) FROM generated_artifacts",
    )[0]
    assert owner == "host:1:abc" and 25 < expires_in <= 30


def test_claim__leased_row_is_not_claimed_again_until_lease_expires(
    clean_db: str,
) -> None:
    seed(clean_db, 1)
    assert len(claim(clean_db, 5, "w1")) == 1

    assert claim(clean_db, 5, "w2") == []

    expire_leases(clean_db)
    [row] = claim(clean_db, 5, "w2")
    assert row["lost_owner"] == "w1" and row["attempts"] == 2


def test_final_write__with_a_lost_lease_changes_nothing(clean_db: str) -> None:
    seed(clean_db, 1)
    [first] = claim(clean_db, 1, "w1")
    expire_leases(clean_db)
    [second] = claim(clean_db, 1, "w2")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        late = update_content_and_state(
            conn,
            first["id"],
            first["lease_token"],
            state="success",
            content={"text": "late"},
        )
        on_time = update_content_and_state(
            conn,
            second["id"],
            second["lease_token"],
            state="success",
            content={"text": "on time"},
        )

        again = update_content_and_state(
            conn,
            second["id"],
            second["lease_token"],
            state="success",
            content={"text": "twice"},
        )

    assert (late, on_time, again) == (False, True, False)
    assert query(
        clean_db, "SELECT state, content->>'text' FROM generated_artifacts"
    ) == [("success", "on time")]


def test_renew_leases__renews_held_rows_and_reports_lost_ones(clean_db: str) -> None:
    seed(clean_db, 2)
    rows = claim(clean_db, 2)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            queue.CANCEL_ARTIFACTS,
            {
                "ids": [rows[0]["id"]],
                "content": json.dumps(error_content(ErrorCode.CANCELLED, "en")),
                "channels": [],
            },
        )

        renewed = conn.execute(
            queue.RENEW_LEASES,
            {
                "lease_s": 120,
                "ids": [r["id"] for r in rows],
                "tokens": [r["lease_token"] for r in rows],
            },
        ).fetchall()

    assert [r[0] for r in renewed] == [rows[1]["id"]]
    left = scalar(
        clean_db,
        "SELECT extract(epoch FROM lease_expires_at - now()) "
        "FROM generated_artifacts WHERE id = %s",
        (rows[1]["id"],),
    )
    assert left > 100


def test_release_for_retry__frees_the_row_until_run_after(clean_db: str) -> None:
    seed(clean_db, 1)
    [row] = claim(clean_db, 1)
    error = {"error_code": "LLM_OVERLOADED", "attempt": 1}
    with psycopg.connect(clean_db, autocommit=True) as conn:
        released = conn.execute(
            queue.RELEASE_FOR_RETRY,
            {
                "ids": [row["id"]],
                "tokens": [row["lease_token"]],
                "delays_s": [3600.0],
                "errors": [json.dumps(error)],
            },
        ).fetchall()

    assert len(released) == 1
    assert claim(clean_db, 1) == []
    state, token, wait_s, errors = query(
        clean_db,
        "SELECT state, lease_token, extract(epoch FROM run_after - now()), metadata->'errors' "
        "FROM generated_artifacts",
    )[0]
    assert (state, token) == ("processing", None)
    assert 3500 < wait_s <= 3600
    assert errors == [error]


def test_release_on_shutdown__hands_row_back_at_once_without_spending_the_attempt(
    clean_db: str,
) -> None:
    seed(clean_db, 1)
    [row] = claim(clean_db, 1, "w1")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            queue.RELEASE_ON_SHUTDOWN,
            {"ids": [row["id"]], "tokens": [row["lease_token"]]},
        )

    [again] = claim(clean_db, 1, "w2")

    assert again["id"] == row["id"] and again["attempts"] == 1


def test_fail_lost_artifacts__ends_rows_that_lost_every_attempt_with_worker_lost(
    clean_db: str,
) -> None:
    [poison] = seed(clean_db, 1, max_attempts=2)
    [healthy] = seed(clean_db, 1, max_attempts=2)
    for _ in range(2):
        claim(clean_db, 1, "dying")
        expire_leases(clean_db)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        failed = conn.execute(
            queue.FAIL_LOST_ARTIFACTS,
            {
                "limit": 100,
                "content": json.dumps(error_content(ErrorCode.WORKER_LOST, "en")),
                "error": json.dumps({"error_code": "WORKER_LOST"}),
                "channels": ["wecom"],
            },
        ).fetchall()

    assert [r[0] for r in failed] == [poison]
    rows = dict(query(clean_db, "SELECT id::text, state FROM generated_artifacts"))
    assert rows == {poison: "failed", healthy: "processing"}
    assert (
        scalar(
            clean_db,
            "SELECT content->>'error_code' FROM generated_artifacts WHERE id = %s",
            (poison,),
        )
        == "WORKER_LOST"
    )
    assert query(
        clean_db, "SELECT artifact_id::text, event, channel, state FROM notifications"
    ) == [(poison, "failed", "wecom", "pending")]


def test_fleet_cap__claims_no_more_than_the_cap_across_workers(clean_db: str) -> None:
    seed(clean_db, 10)

    first = claim(clean_db, 4, "w1", cap=5)
    second = claim(clean_db, 4, "w2", cap=5)
    third = claim(clean_db, 4, "w3", cap=5)

    assert (len(first), len(second), len(third)) == (4, 1, 0)


def test_fleet_pause__stops_claims_until_it_ends(clean_db: str) -> None:
    seed(clean_db, 1)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            queue.PAUSE_FLEET,
            {"name": queue.LLM_CONTROL, "seconds": 30, "reason": "429"},
        )
        shorter = conn.execute(
            queue.PAUSE_FLEET,
            {"name": queue.LLM_CONTROL, "seconds": 1, "reason": "429"},
        ).fetchone()

    assert claim(clean_db, 1) == []
    assert shorter[0] > 25  # a shorter pause never cuts a longer one
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE queue_controls SET paused_until = now() - interval '1 second'"
        )
    assert len(claim(clean_db, 1)) == 1


def test_claim__returns_row_with_missing_task_for_input_not_found(
    clean_db: str,
) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO generated_artifacts (task_id, artifact_type, state) "
            "VALUES ('nope', 'summary', 'processing')"
        )

    [row] = claim(clean_db, 1)

    assert row["task_exists"] is False and row["task_id"] == "nope"


# -- repository -------------------------------------------------------------


def test_create__defaults_to_success(conn: psycopg.Connection) -> None:
    task_id = create_task(conn, NewTask(name="n", transcript="t"))

    row = create(conn, task_id, "summary", content={"format": "markdown", "text": "x"})

    assert row["state"] == "success" and row["finished_at"] is not None


def test_create_placeholder__is_processing_with_no_lease(
    conn: psycopg.Connection,
) -> None:
    task_id = create_task(conn, NewTask(name="n", transcript="t"))

    row = create_placeholder(conn, task_id, "summary", priority=3, max_attempts=2)

    assert (row["state"], row["lease_owner"], row["priority"], row["max_attempts"]) == (
        "processing",
        None,
        3,
        2,
    )
    assert row["version"] == 1


def test_update_content_and_state__failure_puts_error_in_content_and_metadata(
    clean_db: str,
) -> None:
    seed(clean_db, 1)
    [row] = claim(clean_db, 1)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        ok = update_content_and_state(
            conn,
            row["id"],
            row["lease_token"],
            state="failed",
            error_code=ErrorCode.OUTPUT_REFUSED,
            locale="en",
            channels=["wecom"],
        )
        status = get_status(conn, row["id"])

    assert ok
    assert status["state"] == "failed"
    assert status["error"] == {
        "error_code": "OUTPUT_REFUSED",
        "error_message": "The model refused to produce this output.",
        "hint": "Check the transcript and the prompt.",
    }
    assert set(status) == {
        "artifact_id",
        "state",
        "created_at",
        "updated_at",
        "attempts",
        "progress",
        "error",
    }
    errors = scalar(clean_db, "SELECT metadata->'errors' FROM generated_artifacts")
    assert errors == [{"error_code": "OUTPUT_REFUSED", "detail": None}]
    assert (
        scalar(clean_db, "SELECT count(*) FROM notifications WHERE event = 'failed'")
        == 1
    )


def test_update_content_and_state__rejects_a_non_final_state(
    conn: psycopg.Connection,
) -> None:
    with pytest.raises(ValueError, match="final state"):
        update_content_and_state(
            conn, "00000000-0000-0000-0000-000000000000", "x", state="processing"
        )


def test_claim__takes_expired_leases_and_waiting_rows_in_one_claim_order(
    clean_db: str,
) -> None:
    # Waiting rows and rows whose holder died come from two indexes; a claim
    # still takes them by priority, then age.
    [dead_low] = seed(clean_db, 1, priority=0)
    [dead_high] = seed(clean_db, 1, priority=5)
    assert len(claim(clean_db, 2, "dying")) == 2
    expire_leases(clean_db)
    [waiting_mid] = seed(clean_db, 1, priority=3)
    [waiting_low] = seed(clean_db, 1, priority=0)

    claimed = claim(clean_db, 3, "w2")

    assert [r["id"] for r in claimed] == [dead_high, waiting_mid, dead_low]
    assert [r["lost_owner"] for r in claimed] == ["dying", None, "dying"]
    assert [r["id"] for r in claim(clean_db, 3, "w3")] == [waiting_low]


def test_fleet_cap__counts_expired_leases_as_free(clean_db: str) -> None:
    seed(clean_db, 6)
    assert len(claim(clean_db, 3, "dying", cap=3)) == 3
    assert claim(clean_db, 3, "w2", cap=3) == []
    expire_leases(clean_db)

    taken = claim(clean_db, 5, "w2", cap=3)

    assert len(taken) == 3
    assert sum(r["lost_owner"] == "dying" for r in taken) == 3


def test_fail_lost_artifacts__also_ends_unleased_rows_with_no_attempts_left(
    clean_db: str,
) -> None:
    # Only a hand edit leaves a row so; without this it would wait forever.
    [stranded] = seed(clean_db, 1, attempts=3, max_attempts=3)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        failed = conn.execute(
            queue.FAIL_LOST_ARTIFACTS,
            {
                "limit": 100,
                "content": json.dumps(error_content(ErrorCode.WORKER_LOST, "en")),
                "error": json.dumps({"error_code": "WORKER_LOST"}),
                "channels": [],
            },
        ).fetchall()

    assert [r[0] for r in failed] == [stranded]


def test_final_write__notifies_every_row_in_few_notifications(clean_db: str) -> None:
    ids = seed(clean_db, 100)
    rows = claim(clean_db, 100)
    batch = [
        {
            "id": r["id"],
            "token": r["lease_token"],
            "state": "success",
            "content": {"text": "done"},
            "metadata": {},
            "error": None,
        }
        for r in rows
    ]
    with psycopg.connect(clean_db, autocommit=True) as listener:
        listener.execute(f'LISTEN "{queue.EVENTS_CHANNEL}"')
        with psycopg.connect(clean_db, autocommit=True) as conn:
            written = conn.execute(
                queue.FINISH_ARTIFACTS_JSON,
                {"batch": json.dumps(batch), "channels": []},
            ).fetchall()
        payloads = [n.payload for n in listener.notifies(timeout=2.0, stop_after=2)]

    assert len(written) == 100
    changes = [change for payload in payloads for change in json.loads(payload)]
    assert sorted(c["artifact_id"] for c in changes) == sorted(ids)
    assert {c["state"] for c in changes} == {"success"}
    # One statement, 100 rows: two NOTIFYs under the 8,000-byte payload limit.
    assert len(payloads) == 2
    assert max(len(p.encode()) for p in payloads) < 8000


@pytest.mark.parametrize(
    "name", ["COUNT_UNFINISHED", "QUEUE_DEPTH", "STATS_QUEUE", "CLAIM_BATCH"]
)
def test_reads_of_unfinished_rows__never_scan_the_finished_ones(
    clean_db: str, name: str
) -> None:
    # Sequential scans switched off: the plan falls back to one only when no
    # index can serve the statement, so one in the plan means the statement
    # would read every finished row too.
    seed(clean_db, 3)
    params = {"limit": 10, "worker_id": "w", "lease_s": 30}
    with psycopg.connect(clean_db) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN " + getattr(queue, name),
                params if "%(" in getattr(queue, name) else None,
            ).fetchall()
        )
        conn.rollback()

    assert "Seq Scan on generated_artifacts" not in plan, plan


def test_worker_claim__is_planned_once_per_connection_beside_many_finished_rows(
    clean_db: str,
) -> None:
    # With ``LIMIT $1`` a prepared claim beside this many finished rows was
    # planned anew on every run: PostgreSQL priced the generic plan from a
    # guessed limit and kept choosing per-run plans. The worker's claim has
    # its limit in the text, so after psycopg prepares it and PostgreSQL's
    # five trial plans, the one cached plan serves every claim.
    [task_id] = query(
        clean_db,
        "INSERT INTO tasks (name, transcript) VALUES ('done', 'x') RETURNING id",
    )[0]
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO generated_artifacts (task_id, artifact_type, version, state, "
            "content, finished_at) SELECT %s, 'meeting_minutes', g, 'success', "
            "'{}'::jsonb, now() FROM generate_series(1, 50000) g",
            (task_id,),
        )
        conn.execute(
            "INSERT INTO generated_artifacts (task_id, artifact_type, version, state) "
            "SELECT %s, 'summary', g, 'processing' FROM generate_series(1, 2000) g",
            (task_id,),
        )
        conn.execute("VACUUM ANALYZE generated_artifacts")

    async def claims() -> list[tuple[int, int]]:
        async with AsyncConnectionPool(
            clean_db, min_size=1, max_size=1, kwargs={"autocommit": True}
        ) as pool:
            claimer = Claimer(pool, worker_id="w", lease_s=30, fleet_cap=None)
            for _ in range(30):
                assert len(await claimer.claim_batch(10)) == 10
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE '%%FOR UPDATE SKIP LOCKED%%'"
                )
                return await cur.fetchall()

    [(generic, custom)] = asyncio.run(claims())

    assert custom <= 5
    assert generic == 30 - 5 - custom  # the first five runs are not prepared
