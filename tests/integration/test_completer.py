"""The completer: batched final writes, and one bad outcome not sinking a batch."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared import queue
from tests.support.processes import query, seed
from worker.completer import Completer, Finish


def _claim_all(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            queue.CLAIM_BATCH, {"limit": 100, "worker_id": "w", "lease_s": 30}
        ).fetchall()
    return [(r[0], r[5]) for r in rows]


async def _finish_all(
    url: str, outcomes: list[tuple[str, str, dict]]
) -> list[bool | BaseException]:
    async with AsyncConnectionPool(
        url, min_size=1, max_size=2, kwargs={"autocommit": True}
    ) as pool:
        completer = Completer(pool, channels=["wecom"])
        runner = asyncio.create_task(completer.run())
        results = await asyncio.gather(
            *(
                completer.finish(Finish(i, t, "success", c, {}, None))
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
