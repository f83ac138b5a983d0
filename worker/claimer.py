"""Claims batches of rows for this worker.

One short transaction per claim; with a fleet-wide cap, the transaction first
takes an advisory lock so that counting the fleet's leased rows and leasing
more cannot interleave with another worker doing the same. Either way a claim
is one round trip to the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared import queue


@dataclass(frozen=True)
class ClaimedRow:
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
        params = {
            "limit": limit,
            "worker_id": self._worker_id,
            "lease_s": self._lease_s,
        }
        async with self._pool.connection() as conn:
            if self._fleet_cap is None:
                rows = await _fetch(conn, queue.CLAIM_BATCH, params)
            else:
                params["fleet_cap"] = self._fleet_cap
                rows = await _fetch_capped(conn, params)
        return [ClaimedRow(**row) for row in rows]


async def _fetch(conn: AsyncConnection, sql: str, params: dict) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def _fetch_capped(conn: AsyncConnection, params: dict) -> list[dict]:
    """The lock and the capped claim in one round trip (pipeline mode).

    Both statements go out together and run in one transaction that ends at
    the pipeline's sync (implicitly on an autocommit connection), so the
    advisory lock is held until the claim commits, and the claim, a second
    statement, still gets a snapshot taken after the lock was granted. Sent
    one by one (BEGIN, lock, claim, COMMIT) they cost four round trips, with
    the lock held across all of them.
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        async with conn.pipeline():
            await conn.execute(queue.LOCK_FLEET_CLAIMS)
            await cur.execute(queue.CLAIM_BATCH_CAPPED, params)
        return await cur.fetchall()
