"""Fleet-wide LLM backpressure kept in PostgreSQL.

A 429 or 529 carrying ``retry-after`` pauses the whole fleet: the pause is a
row in ``queue_controls`` that claims check atomically and that every
request checks before it is sent. Extending is ``greatest(old, new)``, so two
workers reporting different waits keep the longer one.
"""

from __future__ import annotations

import asyncio

import structlog
from psycopg_pool import AsyncConnectionPool

from shared import queue

log = structlog.get_logger(__name__)

# How often a waiting request re-reads the pause: it may have been extended.
RECHECK_S = 1.0


class DatabaseGate:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def remaining_s(self) -> float:
        async with self._pool.connection() as conn:
            cur = await conn.execute(queue.FLEET_PAUSE_REMAINING, {"name": queue.LLM_CONTROL})
            row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    async def wait_open(self) -> None:
        while (remaining := await self.remaining_s()) > 0:
            await asyncio.sleep(min(remaining, RECHECK_S))

    async def pause(self, seconds: float, reason: str) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                queue.PAUSE_FLEET,
                {"name": queue.LLM_CONTROL, "seconds": seconds, "reason": reason},
            )
            row = await cur.fetchone()
        log.warning("fleet.paused", reason=reason, paused_for_s=round(row[0], 2) if row else seconds)
