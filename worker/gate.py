"""Fleet-wide LLM backpressure kept in PostgreSQL.

A 429 or 529 carrying ``retry-after`` pauses the whole fleet: the pause is a
row in ``queue_controls`` that claims check atomically and that every
request checks before it is sent. Extending is ``greatest(old, new)``, so two
workers reporting different waits keep the longer one.

The gate fails open: when the database cannot be reached, a request goes
ahead rather than failing its artifact. The pause is a courtesy to the API,
which still answers 429 to anyone who ignores it, and the job's own retry
loop waits out the ``retry-after`` it was given either way.
"""

from __future__ import annotations

import asyncio

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shared import queue

log = structlog.get_logger(__name__)

# How often a waiting request re-reads the pause: it may have been extended.
RECHECK_S = 1.0
# How long a request waits for a pooled connection to read the pause before
# it goes ahead without: the pool's own default (30 s) would hold every
# request that long while the database is away.
CHECK_TIMEOUT_S = 5.0

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


class DatabaseGate:
    def __init__(
        self, pool: AsyncConnectionPool, *, check_timeout_s: float = CHECK_TIMEOUT_S
    ) -> None:
        self._pool = pool
        self._check_timeout_s = check_timeout_s

    async def remaining_s(self) -> float:
        """Seconds the fleet stays paused; 0 when it is not."""
        async with self._pool.connection(timeout=self._check_timeout_s) as conn:
            cur = await conn.execute(
                queue.FLEET_PAUSE_REMAINING, {"name": queue.LLM_CONTROL}
            )
            row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    async def wait_open(self) -> None:
        """Return once no pause is in force (or the database cannot say)."""
        while True:
            try:
                remaining = await self.remaining_s()
            except DB_ERRORS as exc:
                log.warning(
                    "fleet.pause_unreadable",
                    error=" ".join(str(exc).split()),
                    action="request sent",
                )
                return
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, RECHECK_S))

    async def pause(self, seconds: float, reason: str) -> None:
        """Pause every worker's claims and requests for ``seconds``."""
        try:
            async with self._pool.connection(timeout=self._check_timeout_s) as conn:
                cur = await conn.execute(
                    queue.PAUSE_FLEET,
                    {"name": queue.LLM_CONTROL, "seconds": seconds, "reason": reason},
                )
                row = await cur.fetchone()
        except DB_ERRORS as exc:
            log.warning(
                "fleet.pause_failed",
                reason=reason,
                error=" ".join(str(exc).split()),
                action="this job still waits before its retry",
            )
            return
        paused_for_s = round(row[0], 2) if row else seconds
        log.warning("fleet.paused", reason=reason, paused_for_s=paused_for_s)
