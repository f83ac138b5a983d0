"""Claims batches of rows for this worker.

One short transaction per claim; with a fleet-wide cap, the transaction first
takes an advisory lock so that counting the fleet's leased rows and leasing
more cannot interleave with another worker doing the same. Either way a claim
is one round trip to the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

from psycopg import AsyncConnection, pq
from psycopg.cursor_async import AsyncCursor
from psycopg.rows import RowMaker, no_result
from psycopg_pool import AsyncConnectionPool

from shared import queue


class ClaimedRow(NamedTuple):
    """One row of a claim, by the names of the claim's result columns."""

    id: str
    task_id: str
    artifact_type: str
    attempts: int
    max_attempts: int
    lease_token: str
    lost_owner: str | None
    task_exists: bool
    task_name: str | None
    meeting_time: datetime | None
    language: str | None
    transcript: str | None


class Claimer:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        worker_id: str,
        lease_s: float,
        fleet_cap: int | None,
    ) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self._lease_s = lease_s
        self._fleet_cap = fleet_cap

    async def claim_batch(self, limit: int) -> list[ClaimedRow]:
        """Lease up to ``limit`` claimable rows (fewer under the fleet cap)."""
        if limit <= 0:
            return []
        async with self._pool.connection() as conn:
            if self._fleet_cap is None:
                params = {"worker_id": self._worker_id, "lease_s": self._lease_s}
                return await _fetch(conn, queue.claim_batch_for(limit), params)
            return await _fetch_capped(conn, self._capped_params(limit))

    async def send_capped_claim(
        self, conn: AsyncConnection, limit: int
    ) -> AsyncCursor[ClaimedRow]:
        """Queue a fleet-capped claim of up to ``limit`` rows in ``conn``'s pipeline.

        For a caller that ends rows in the same transaction: the claim then
        counts the capacity they free (its own uncommitted writes are visible
        to it) and takes it before any other worker can. The rows are the
        cursor's once the pipeline has synced.
        """
        if self._fleet_cap is None:
            raise ValueError(
                "a claim in another statement's transaction needs a fleet cap"
            )
        cur: AsyncCursor[ClaimedRow] = conn.cursor(row_factory=claimed_row)
        await _send_capped(conn, cur, self._capped_params(limit))
        return cur

    def _capped_params(self, limit: int) -> dict[str, Any]:
        return {
            "limit": limit,
            "worker_id": self._worker_id,
            "lease_s": self._lease_s,
            "fleet_cap": self._fleet_cap,
        }


def claimed_row(cursor: Any) -> RowMaker[ClaimedRow]:
    """psycopg row factory: result rows straight into ``ClaimedRow``s.

    Fields are picked by column name once per result, so the statement may
    order its columns as it likes (and return more); a tuple is cheaper to
    build per row than a dict and a dataclass. The names come from the raw
    result: ``cursor.description`` would build a typed column for each.
    """
    result = cursor.pgresult
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        return no_result
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    missing = [name for name in ClaimedRow._fields if name not in names]
    if missing:
        raise LookupError(f"claim result lacks column(s) {', '.join(missing)}")
    pick = itemgetter(*(names.index(name) for name in ClaimedRow._fields))

    def make(values: Sequence[Any]) -> ClaimedRow:
        return ClaimedRow._make(pick(values))

    return make


async def _fetch(
    conn: AsyncConnection, sql: str, params: dict[str, Any]
) -> list[ClaimedRow]:
    cur: AsyncCursor[ClaimedRow]
    async with conn.cursor(row_factory=claimed_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def _fetch_capped(
    conn: AsyncConnection, params: dict[str, Any]
) -> list[ClaimedRow]:
    """The lock and the capped claim in one round trip (pipeline mode).

    Both statements go out together and run in one transaction that ends at
    the pipeline's sync (implicitly on an autocommit connection), so the
    advisory lock is held until the claim commits, and the claim, a second
    statement, still gets a snapshot taken after the lock was granted. Sent
    one by one (BEGIN, lock, claim, COMMIT) they cost four round trips, with
    the lock held across all of them.
    """
    cur: AsyncCursor[ClaimedRow]
    async with conn.cursor(row_factory=claimed_row) as cur:
        async with conn.pipeline():
            await _send_capped(conn, cur, params)
        return await cur.fetchall()


async def _send_capped(
    conn: AsyncConnection, cur: AsyncCursor[ClaimedRow], params: dict[str, Any]
) -> None:
    """Queue the fleet lock and the capped claim in ``conn``'s open pipeline."""
    await conn.execute(queue.LOCK_FLEET_CLAIMS)
    await cur.execute(queue.CLAIM_BATCH_CAPPED, params)
