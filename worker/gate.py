"""Fleet-wide LLM backpressure kept in PostgreSQL.

A 429 or 529 carrying ``retry-after`` pauses the whole fleet: the pause is a
row in ``queue_controls`` that claims check atomically and that every
request checks before it is sent. Extending is ``greatest(old, new)``, so two
workers reporting different waits keep the longer one.

What the check before a request must guarantee, given that a row is only
claimed while no pause is in force (the claim statement itself checks):

- A pause this process set holds its own requests at once: ``pause`` drops
  what this process believed, so the next request reads the pause again.
- A pause another worker set holds this process's requests within
  ``trust_open_s`` (1 s by default) of its commit. A reading of "not
  paused" is trusted for that long, counted from before the query was
  sent, so a process sending many requests a second reads the row about
  once a second instead of once per request. Requests of rows claimed
  after the pause committed never get this far: their claims find nothing.
- While paused, a waiting request reads the pause again every
  ``RECHECK_S`` (it may have been extended) and goes once it has passed.

Concurrent requests share one reading: whoever finds the last one too old
reads, and the requests that queued behind it take its answer instead of
sending a query each.

The gate fails open: when the database cannot be reached, a request goes
ahead rather than failing its artifact. The pause is a courtesy to the API,
which still answers 429 to anyone who ignores it, and the job's own retry
loop waits out the ``retry-after`` it was given either way.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shared import queue

log = structlog.get_logger(__name__)

# How often a waiting request re-reads the pause: it may have been extended.
RECHECK_S = 1.0
# How long a reading of "not paused" lets requests go without another: the
# most a pause set by another worker can lag behind in this process.
TRUST_OPEN_S = 1.0
# How long a request waits for a pooled connection to read the pause before
# it goes ahead without: the pool's own default (30 s) would hold every
# request that long while the database is away.
CHECK_TIMEOUT_S = 5.0

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


@dataclass(frozen=True)
class _Reading:
    """One reading of the pause: seconds left, 0 when open or unreadable."""

    epoch: int
    remaining_s: float


class DatabaseGate:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        check_timeout_s: float = CHECK_TIMEOUT_S,
        trust_open_s: float = TRUST_OPEN_S,
    ) -> None:
        self._pool = pool
        self._check_timeout_s = check_timeout_s
        self._trust_open_s = trust_open_s
        # Event loop time until which requests go without reading the pause.
        self._open_until = -math.inf
        # One reading at a time; requests that queued behind it take its answer.
        self._reading = asyncio.Lock()
        self._last: _Reading | None = None
        # Bumped by ``pause``: a reading begun before it is not to be used.
        self._epoch = 0

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
        loop = asyncio.get_running_loop()
        while loop.time() >= self._open_until:
            remaining = await self._shared_reading(loop)
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, RECHECK_S))

    async def _shared_reading(self, loop: asyncio.AbstractEventLoop) -> float:
        """Seconds left, read by this request or by the one it queued behind."""
        seen = self._last
        async with self._reading:
            last = self._last
            if last is not seen and last is not None and last.epoch == self._epoch:
                return last.remaining_s
            self._last = await self._read(loop)
            return self._last.remaining_s

    async def _read(self, loop: asyncio.AbstractEventLoop) -> _Reading:
        """Read the pause; trust an open reading for ``trust_open_s``."""
        epoch = self._epoch
        asked_at = loop.time()
        try:
            remaining = await self.remaining_s()
        except DB_ERRORS as exc:
            # Fail open, and so do the requests queued behind this reading,
            # rather than each wait in turn for the same error. The next
            # request after them tries the database again.
            log.warning(
                "fleet.pause_unreadable",
                error=" ".join(str(exc).split()),
                action="request sent",
            )
            return _Reading(epoch, 0.0)
        if remaining <= 0 and epoch == self._epoch:
            self._open_until = asked_at + self._trust_open_s
        return _Reading(epoch, max(remaining, 0.0))

    def _forget(self) -> None:
        """Drop what this process believes; the next request reads again."""
        self._epoch += 1
        self._open_until = -math.inf

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
        finally:
            # Whether or not it committed: this process's own requests read
            # the pause again before they go.
            self._forget()
        paused_for_s = round(row[0], 2) if row else seconds
        log.warning("fleet.paused", reason=reason, paused_for_s=paused_for_s)
