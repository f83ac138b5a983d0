"""Writes job outcomes in batches.

Jobs hand their final state or retry release to the completer and await the
verdict. Whatever arrives while one write is in flight goes into the next
one, so under load many outcomes share a statement and a commit (group
commit), and an idle worker still writes each outcome at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
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
    written: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class Release:
    artifact_id: str
    lease_token: str
    delay_s: float
    error: dict[str, Any]
    written: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


_STOP = object()

# How long a stopping worker keeps retrying writes against an absent database.
CLOSING_RETRY_S = 10.0


class Completer:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        channels: list[str],
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._channels = channels
        self._pending: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = False
        self._on_batch = on_batch
        # Outcomes handed over whose write has not settled yet. Their jobs are
        # done with the model, so the claim loop may count their slots free
        # and claim while the batch is written (``on_batch`` wakes it).
        self.unwritten = 0

    async def finish(self, outcome: Finish) -> bool:
        """Queue a final state; True once committed, False if the lease was gone."""
        self._hand_over(outcome)
        return await outcome.written

    async def release(self, outcome: Release) -> bool:
        self._hand_over(outcome)
        return await outcome.written

    def _hand_over(self, outcome: Finish | Release) -> None:
        self.unwritten += 1
        outcome.written.add_done_callback(self._settled)
        self._pending.put_nowait(outcome)

    def _settled(self, _: asyncio.Future[bool]) -> None:
        self.unwritten -= 1

    async def run(self) -> None:
        """Write batches until ``close`` has been called and all is written."""
        while True:
            first = await self._pending.get()
            batch = [first, *self._drain()]
            outcomes = [o for o in batch if o is not _STOP]
            if outcomes:
                if self._on_batch is not None:
                    self._on_batch()
                await self._write(outcomes)
            if len(outcomes) != len(batch):
                return

    async def close(self) -> None:
        """Write everything queued so far, then stop ``run``.

        While closing, a database that stays away for ``CLOSING_RETRY_S`` is
        given up on: the process is stopping, and the rows' leases expire so
        another worker redoes them.
        """
        self._closing = True
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
        first_failure: float | None = None
        while True:
            try:
                written = await self._execute(finishes, releases)
                break
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                now = time.monotonic()
                first_failure = first_failure or now
                if self._closing and now - first_failure > CLOSING_RETRY_S:
                    log.error(
                        "completer.abandoned",
                        batch=len(batch),
                        action="leases will expire",
                    )
                    written = set()
                    break
                # The database is away: keep the outcomes and try again. Writes
                # are fenced by the lease token, so a retry after a commit whose
                # answer was lost writes nothing the second time.
                log.warning(
                    "completer.write_failed",
                    error=str(exc).strip(),
                    retry_in_s=delay_s,
                    batch=len(batch),
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
            except Exception as exc:
                # One unstorable outcome must not sink the others (nor this
                # loop, which every job waits on): split the batch and let the
                # job that owns the bad one decide what to do with the error.
                if len(batch) > 1:
                    for outcome in batch:
                        await self._write([outcome])
                    return
                log.error(
                    "completer.outcome_rejected",
                    artifact_id=batch[0].artifact_id,
                    error=repr(exc),
                )
                if not batch[0].written.done():
                    batch[0].written.set_exception(exc)
                return
        for outcome in batch:
            if not outcome.written.done():
                outcome.written.set_result(
                    (outcome.artifact_id, outcome.lease_token) in written
                )

    async def _execute(
        self, finishes: list[Finish], releases: list[Release]
    ) -> set[tuple[str, str]]:
        async with self._pool.connection() as conn:
            # Both kinds in one batch commit together: were the first to commit
            # and the second to fail, the retry would find the first one's
            # tokens gone and report written outcomes as refused.
            if finishes and releases:
                async with conn.transaction():
                    return await self._finish(conn, finishes) | await self._release(
                        conn, releases
                    )
            if finishes:
                return await self._finish(conn, finishes)
            return await self._release(conn, releases)

    async def _finish(self, conn: Any, finishes: list[Finish]) -> set[tuple[str, str]]:
        # One JSON document for the whole batch (see FINISH_ARTIFACTS_JSON).
        batch = [
            {
                "id": f.artifact_id,
                "token": f.lease_token,
                "state": f.state,
                "content": f.content,
                "metadata": f.metadata,
                "error": f.error or None,
            }
            for f in finishes
        ]
        cur = await conn.execute(
            queue.FINISH_ARTIFACTS_JSON,
            {"batch": _json(batch), "channels": self._channels},
        )
        return {(row[0], row[1]) for row in await cur.fetchall()}

    async def _release(
        self, conn: Any, releases: list[Release]
    ) -> set[tuple[str, str]]:
        cur = await conn.execute(
            queue.RELEASE_FOR_RETRY,
            {
                "ids": [r.artifact_id for r in releases],
                "tokens": [r.lease_token for r in releases],
                "delays_s": [r.delay_s for r in releases],
                "errors": [_json(r.error) for r in releases],
            },
        )
        return {(row[0], row[1]) for row in await cur.fetchall()}


# Datetimes and dataclasses, which orjson would write and json.dumps refuses,
# are refused as before (see ``_json``).
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _json(value: Any) -> str:
    """``value`` as JSON text for a ``jsonb`` parameter.

    orjson, at a tenth of the standard library's cost, writes it as UTF-8
    text; what orjson refuses (integers beyond 64 bits, keys that are not
    strings, unpaired surrogates, datetimes, dataclasses) goes to
    ``json.dumps``, which writes or refuses it as it always did.
    """
    try:
        return orjson.dumps(value, option=_STRICT).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)
