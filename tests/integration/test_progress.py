"""Progress writes on a claimed row of the session database.

A job's first report starts its clock and is not written; reports after
``min_interval_s`` are, at most once per interval, fenced by the lease
token. Waits here only let an interval pass; nothing asserts how long
anything took.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from shared.errors import LeaseLost
from tests.support.processes import query, seed
from worker.claimer import Claimer
from worker.progress import ProgressWriter

INTERVAL_S = 0.2


def progress_of(url: str, artifact_id: str) -> Any:
    [(progress,)] = query(
        url,
        "SELECT metadata->'progress' FROM generated_artifacts WHERE id = %s",
        (artifact_id,),
    )
    return progress


async def with_claimed_row(url: str, scenario: Any) -> Any:
    async with AsyncConnectionPool(
        url, min_size=1, max_size=2, kwargs={"autocommit": True}
    ) as pool:
        [row] = await Claimer(
            pool, worker_id="w", lease_s=30, fleet_cap=None
        ).claim_batch(1)
        writer = ProgressWriter(pool, min_interval_s=INTERVAL_S)
        return await scenario(writer, row.id, row.lease_token)


def test_progress__reports_within_the_first_interval_are_not_written(
    clean_db: str,
) -> None:
    """A short job (its final write follows at once) costs no progress write."""
    seed(clean_db, 1)

    async def scenario(writer: ProgressWriter, artifact_id: str, token: str) -> Any:
        await writer.report(artifact_id, token, {"phase": "generating", "n": 1})
        await writer.report(artifact_id, token, {"phase": "generating", "n": 2})
        return artifact_id

    artifact_id = asyncio.run(with_claimed_row(clean_db, scenario))

    assert progress_of(clean_db, artifact_id) is None


def test_progress__written_once_the_interval_has_passed_then_throttled(
    clean_db: str,
) -> None:
    seed(clean_db, 1)

    async def scenario(
        writer: ProgressWriter, artifact_id: str, token: str
    ) -> tuple[str, Any]:
        await writer.report(artifact_id, token, {"n": 1})  # starts the clock
        await asyncio.sleep(INTERVAL_S)
        await writer.report(artifact_id, token, {"n": 2})  # written
        await writer.report(artifact_id, token, {"n": 3})  # within the interval
        return artifact_id, progress_of(clean_db, artifact_id)

    artifact_id, after_second = asyncio.run(with_claimed_row(clean_db, scenario))

    assert after_second == {"n": 2}
    assert progress_of(clean_db, artifact_id) == {"n": 2}


def test_progress__a_write_under_a_lost_lease_raises(clean_db: str) -> None:
    seed(clean_db, 1)

    async def scenario(writer: ProgressWriter, artifact_id: str, token: str) -> None:
        wrong = "00000000-0000-0000-0000-000000000000"
        await writer.report(artifact_id, wrong, {"n": 1})
        await asyncio.sleep(INTERVAL_S)
        await writer.report(artifact_id, wrong, {"n": 2})

    with pytest.raises(LeaseLost):
        asyncio.run(with_claimed_row(clean_db, scenario))


def test_progress__forget_starts_the_clock_again(clean_db: str) -> None:
    """A row claimed again after ``forget`` is a new job: its first report waits."""
    seed(clean_db, 1)

    async def scenario(writer: ProgressWriter, artifact_id: str, token: str) -> Any:
        await writer.report(artifact_id, token, {"n": 1})
        await asyncio.sleep(INTERVAL_S)
        writer.forget(artifact_id)
        await writer.report(artifact_id, token, {"n": 2})
        return artifact_id

    artifact_id = asyncio.run(with_claimed_row(clean_db, scenario))

    assert progress_of(clean_db, artifact_id) is None
