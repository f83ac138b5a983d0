"""The completer: batched final writes, one bad outcome not sinking a batch, and
the claims that ride on final writes under a fleet cap."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shared import queue
from tests.support.pg_proxy import PgProxy
from tests.support.processes import query, seed
from worker.claimer import Claimer
from worker.completer import Completer, Finish, Refill, Release


def _claim_all(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            queue.CLAIM_BATCH, {"limit": 100, "worker_id": "w", "lease_s": 30}
        ).fetchall()
    return [(r[0], r[5]) for r in rows]


class _Refills:
    """What a worker gives the completer: slots to fill, and where rows go."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.calls: list[tuple[list[str], int, bool]] = []

    def reserve(self) -> int:
        return self.slots

    def started(self, rows: list, asked: int, batch: list, committed: bool) -> None:
        self.calls.append(([r.id for r in rows], asked, committed))


async def _finish_all(
    url: str,
    outcomes: list[tuple[str, str, dict]],
    *,
    refills: _Refills | None = None,
    cap: int | None = None,
) -> list[bool | BaseException]:
    """Finish ``outcomes`` through one completer; with ``refills``, claims ride."""
    async with AsyncConnectionPool(
        url, min_size=1, max_size=2, kwargs={"autocommit": True}
    ) as pool:
        refill = None
        if refills is not None:
            claimer = Claimer(pool, worker_id="w", lease_s=30, fleet_cap=cap)
            refill = Refill(claimer, refills.reserve, refills.started)
        completer = Completer(pool, channels=["wecom"], refill=refill)
        runner = asyncio.create_task(completer.run())
        results = await asyncio.gather(
            *(
                completer.finish(Finish(i, t, "success", c, {}, None, 1))
                for i, t, c in outcomes
            ),
            return_exceptions=True,
        )
        await completer.close()
        await runner
    return results


def test_completer__writes_many_outcomes_and_their_outbox_rows(clean_db: str) -> None:
    seed(clean_db, 20)
    claimed = _claim_all(clean_db)

    results = asyncio.run(
        _finish_all(clean_db, [(i, t, {"text": i}) for i, t in claimed])
    )

    assert results == [True] * 20
    assert query(
        clean_db,
        "SELECT count(*) FROM generated_artifacts "
        "WHERE state = 'success' AND content->>'text' = id::text",
    ) == [(20,)]
    assert query(clean_db, "SELECT count(*) FROM notifications") == [(20,)]


def test_completer__an_unstorable_outcome_fails_alone(clean_db: str) -> None:
    seed(clean_db, 3)
    claimed = _claim_all(clean_db)
    # PostgreSQL's jsonb refuses \u0000; this is what the completer must survive.
    contents = [{"text": "fine"}, {"text": "bad\u0000"}, {"text": "fine"}]

    results = asyncio.run(
        _finish_all(
            clean_db, [(i, t, c) for (i, t), c in zip(claimed, contents, strict=True)]
        )
    )

    assert results[0] is True and results[2] is True
    assert isinstance(results[1], psycopg.Error)
    states = dict(query(clean_db, "SELECT id::text, state FROM generated_artifacts"))
    assert states == {
        claimed[0][0]: "success",
        claimed[1][0]: "processing",
        claimed[2][0]: "success",
    }


@pytest.mark.parametrize("wrong_token", ["00000000-0000-0000-0000-000000000000"])
def test_completer__a_stale_token_is_reported_unwritten(
    clean_db: str, wrong_token: str
) -> None:
    seed(clean_db, 1)
    [(artifact_id, _)] = _claim_all(clean_db)

    [result] = asyncio.run(
        _finish_all(clean_db, [(artifact_id, wrong_token, {"text": "late"})])
    )

    assert result is False
    assert query(clean_db, "SELECT state FROM generated_artifacts") == [("processing",)]


# -- a commit whose reply was lost -------------------------------------------


def _write_through(
    proxy: PgProxy, outcomes: list[tuple[str, str, str | None]]
) -> list[bool]:
    """Hand ``outcomes`` (id, token, final state or None for a retry release)
    to one completer whose connections go through ``proxy``, as one batch."""

    async def run() -> list[bool]:
        async with AsyncConnectionPool(
            proxy.url(), min_size=1, max_size=1, kwargs={"autocommit": True}
        ) as pool:
            completer = Completer(pool, channels=["wecom"])
            waits = []
            for artifact_id, token, state in outcomes:
                if state is None:
                    error = {
                        "error_code": "LLM_UNAVAILABLE",
                        "attempt": 1,
                        "worker_id": "w",
                    }
                    waits.append(
                        completer.release(Release(artifact_id, token, 60.0, error))
                    )
                else:
                    content = {"text": f"{state} {artifact_id}"}
                    metadata = {"duration_ms": 7, "worker_id": "w"}
                    waits.append(
                        completer.finish(
                            Finish(
                                artifact_id, token, state, content, metadata, None, 1
                            )
                        )
                    )
            runner = asyncio.create_task(completer.run())
            results = await asyncio.gather(*waits)
            await completer.close()
            await runner
        return list(results)

    return asyncio.run(run())


def test_completer__a_commit_whose_reply_was_lost_counts_as_written(
    clean_db: str,
) -> None:
    seed(clean_db, 2)
    (done_id, done_token), (retry_id, retry_token) = _claim_all(clean_db)
    with PgProxy(clean_db) as proxy:
        # The batch commits, then its connection drops before the reply.
        proxy.cut_after_commit(b"jsonb_to_recordset")

        results = _write_through(
            proxy, [(done_id, done_token, "success"), (retry_id, retry_token, None)]
        )

        assert proxy.cuts == 1
    # The retry found both tokens gone, and both outcomes in their rows.
    assert results == [True, True]
    assert query(
        clean_db,
        "SELECT id::text, state, lease_token IS NULL, "
        "jsonb_array_length(coalesce(metadata->'errors', '[]')) "
        "FROM generated_artifacts ORDER BY state DESC",
    ) == [(done_id, "success", True, 0), (retry_id, "processing", True, 1)]
    # Written once: one notification, one error in the history.
    assert query(clean_db, "SELECT artifact_id::text FROM notifications") == [
        (done_id,)
    ]


def test_completer__after_a_lost_reply_another_attempts_row_is_not_claimed_as_ours(
    clean_db: str,
) -> None:
    seed(clean_db, 2)
    (done_id, done_token), (taken_id, _) = _claim_all(clean_db)
    # The second row's lease went to another attempt (attempt 2, a new token)
    # before this one's write: its token is stale.
    query(
        clean_db,
        "UPDATE generated_artifacts SET lease_token = gen_random_uuid(), "
        "attempts = 2 WHERE id = %s RETURNING id",
        (taken_id,),
    )
    stale_token = "00000000-0000-0000-0000-000000000000"
    with PgProxy(clean_db) as proxy:
        proxy.cut_after_commit(
            b"jsonb_to_recordset",
            # Between the lost reply and the retry, the other attempt ends
            # the row with the very content this one meant to write.
            on_cut=lambda: query(
                clean_db,
                "UPDATE generated_artifacts SET state = 'success', content = %s, "
                "metadata = metadata || %s, lease_token = NULL "
                "WHERE id = %s RETURNING id",
                (
                    Jsonb({"text": f"success {taken_id}"}),
                    Jsonb({"duration_ms": 7, "worker_id": "w"}),
                    taken_id,
                ),
            ),
        )

        results = _write_through(
            proxy,
            [(done_id, done_token, "success"), (taken_id, stale_token, "success")],
        )

    # Same content, but attempt 2's write: this attempt's outcome was refused.
    assert results == [True, False]
    assert query(clean_db, "SELECT count(*) FROM notifications") == [(1,)]


# -- claims riding on final writes (under a fleet cap) ------------------------


def _claim_capped(url: str, limit: int, cap: int) -> list[tuple[str, str]]:
    async def claim() -> list[tuple[str, str]]:
        async with AsyncConnectionPool(
            url, min_size=1, max_size=1, kwargs={"autocommit": True}
        ) as pool:
            claimer = Claimer(pool, worker_id="w", lease_s=30, fleet_cap=cap)
            return [(r.id, r.lease_token) for r in await claimer.claim_batch(limit)]

    return asyncio.run(claim())


def test_refill__claims_the_capacity_the_write_frees_in_the_same_transaction(
    clean_db: str,
) -> None:
    seed(clean_db, 4)
    cap = 2
    claimed = _claim_capped(clean_db, 4, cap)
    assert len(claimed) == cap  # the cap is full
    done_id, done_token = claimed[0]
    refills = _Refills(slots=3)

    [result] = asyncio.run(
        _finish_all(
            clean_db, [(done_id, done_token, {"text": "x"})], refills=refills, cap=cap
        )
    )

    assert result is True
    [(new_ids, asked, committed)] = refills.calls
    # Three slots asked, one granted: the one the finished row gave back.
    assert (len(new_ids), asked, committed) == (1, 3, True)
    assert new_ids[0] not in {i for i, _ in claimed}
    assert query(
        clean_db,
        "SELECT count(*) FROM generated_artifacts "
        "WHERE state = 'processing' AND lease_token IS NOT NULL",
    ) == [(cap,)]
    # One transaction: the new lease starts at the old row's finishing now().
    assert query(
        clean_db,
        "SELECT n.started_at = d.finished_at FROM generated_artifacts n, "
        "generated_artifacts d WHERE n.id = %s AND d.id = %s",
        (new_ids[0], done_id),
    ) == [(True,)]


def test_refill__a_write_that_fails_claims_nothing(clean_db: str) -> None:
    seed(clean_db, 3)
    cap = 3
    [(artifact_id, token)] = _claim_capped(clean_db, 1, cap)
    refills = _Refills(slots=2)

    [result] = asyncio.run(
        _finish_all(
            clean_db,
            [(artifact_id, token, {"text": "bad\u0000"})],
            refills=refills,
            cap=cap,
        )
    )

    assert isinstance(result, psycopg.Error)
    # Told of the failed try, with its reservation, and nothing claimed.
    assert refills.calls == [([], 2, False)]
    assert query(
        clean_db,
        "SELECT count(*) FILTER (WHERE lease_token IS NOT NULL), "
        "count(*) FILTER (WHERE state = 'processing') FROM generated_artifacts",
    ) == [(1, 3)]


def test_refill__asks_for_nothing_when_the_worker_has_no_slots(clean_db: str) -> None:
    seed(clean_db, 2)
    [(artifact_id, token), _] = _claim_capped(clean_db, 2, 5)
    refills = _Refills(slots=0)

    [result] = asyncio.run(
        _finish_all(
            clean_db, [(artifact_id, token, {"text": "x"})], refills=refills, cap=5
        )
    )

    assert result is True
    assert refills.calls == []
    assert query(
        clean_db,
        "SELECT count(*) FROM generated_artifacts WHERE lease_token IS NOT NULL",
    ) == [(1,)]
