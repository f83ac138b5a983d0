"""Writes job outcomes in batches.

Jobs hand their final state or retry release to the completer and await the
verdict. Whatever arrives while one write is in flight goes into the next
one, so under load many outcomes share a statement and a commit (group
commit), and an idle worker still writes each outcome at once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from shared import queue

log = structlog.get_logger(__name__)


@dataclass
class Finish:
    artifact_id: str
    lease_token: str
    state: str
    content: dict[str, Any]
    metadata: dict[str, Any]
    error: dict[str, Any] | None
    written: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Release:
    artifact_id: str
    lease_token: str
    delay_s: float
    error: dict[str, Any]
    written: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


_STOP = object()


class Completer:
    def __init__(self, pool: AsyncConnectionPool, *, channels: list[str]) -> None:
        self._pool = pool
        self._channels = channels
        self._pending: asyncio.Queue[Any] = asyncio.Queue()

    async def finish(self, outcome: Finish) -> bool:
        """Queue a final state; True once committed, False if the lease was gone."""
        self._pending.put_nowait(outcome)
        return await outcome.written

    async def release(self, outcome: Release) -> bool:
        self._pending.put_nowait(outcome)
        return await outcome.written

    async def run(self) -> None:
        """Write batches until ``close`` has been called and all is written."""
        while True:
            first = await self._pending.get()
            batch = [first, *self._drain()]
            outcomes = [o for o in batch if o is not _STOP]
            if outcomes:
                await self._write(outcomes)
            if len(outcomes) != len(batch):
                return

    async def close(self) -> None:
        """Write everything queued so far, then stop ``run``."""
        self._pending.put_nowait(_STOP)

    def _drain(self) -> list[Any]:
        items = []
        while True:
            try:
                items.append(self._pending.get_nowait())
            except asyncio.QueueEmpty:
                return items

    async def _write(self, batch: list[Finish | Release]) -> None:
        finishes = [o for o in batch if isinstance(o, Finish)]
        releases = [o for o in batch if isinstance(o, Release)]
        delay_s = 0.2
        while True:
            try:
                written = await self._execute(finishes, releases)
                break
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # The database is away: keep the outcomes and try again. Writes
                # are fenced by the lease token, so a retry after a commit whose
                # answer was lost writes nothing the second time.
                log.warning("completer.write_failed", error=str(exc).strip(), retry_in_s=delay_s, batch=len(batch))
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        for outcome in batch:
            if not outcome.written.done():
                outcome.written.set_result(outcome.artifact_id in written)

    async def _execute(self, finishes: list[Finish], releases: list[Release]) -> set[str]:
        written: set[str] = set()
        async with self._pool.connection() as conn:
            if finishes:
                cur = await conn.execute(
                    queue.FINISH_ARTIFACTS,
                    {
                        "ids": [f.artifact_id for f in finishes],
                        "tokens": [f.lease_token for f in finishes],
                        "states": [f.state for f in finishes],
                        "contents": [json.dumps(f.content) for f in finishes],
                        "metadata": [json.dumps(f.metadata) for f in finishes],
                        "errors": [json.dumps(f.error) if f.error else None for f in finishes],
                        "channels": self._channels,
                    },
                )
                written.update(row[0] for row in await cur.fetchall())
            if releases:
                cur = await conn.execute(
                    queue.RELEASE_FOR_RETRY,
                    {
                        "ids": [r.artifact_id for r in releases],
                        "tokens": [r.lease_token for r in releases],
                        "delays_s": [r.delay_s for r in releases],
                        "errors": [json.dumps(r.error) for r in releases],
                    },
                )
                written.update(row[0] for row in await cur.fetchall())
        return written
