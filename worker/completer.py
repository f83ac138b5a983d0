"""Writes job outcomes in batches.

Jobs hand their final state or retry release to the completer and await the
verdict. Whatever arrives while one write is in flight goes into the next
one, so under load many outcomes share a statement and a commit (group
commit), and an idle worker still writes each outcome at once.

Under a fleet cap the worker's next claim rides on the write (``Refill``):
the rows end and the claim takes the capacity they free in one transaction
and one round trip, instead of a commit, a wake-up and a claim of its own.
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
from worker.claimer import ClaimedRow, Claimer

log = structlog.get_logger(__name__)


@dataclass
class Finish:
    artifact_id: str
    lease_token: str
    state: str
    content: dict[str, Any]
    metadata: dict[str, Any]
    error: dict[str, Any] | None
    attempt: int  # the row's attempts as claimed: which attempt wrote it
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


@dataclass(frozen=True)
class Refill:
    """Claims that ride on final writes, under a fleet cap.

    ``reserve`` says how many rows the worker would take now (0 for none)
    and holds that many of its slots; ``started`` then gets the rows
    claimed, the number reserved, the batch written and whether the write
    committed. ``started`` follows every ``reserve`` that returned more than
    0, whether or not the write succeeded.
    """

    claimer: Claimer
    reserve: Callable[[], int]
    started: Callable[[list[ClaimedRow], int, list[Finish | Release], bool], None]


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
        refill: Refill | None = None,
    ) -> None:
        self._pool = pool
        self._channels = channels
        self._pending: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = False
        self._on_batch = on_batch
        self._refill = refill
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
                written = await self._attempt(finishes, releases, batch)
                if first_failure is not None:
                    written |= await self._already_written(batch, written)
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
                # answer was lost writes nothing the second time; the outcomes
                # it finds gone are then looked up (``_already_written``).
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

    async def _attempt(
        self,
        finishes: list[Finish],
        releases: list[Release],
        batch: list[Finish | Release],
    ) -> set[tuple[str, str]]:
        """One try at writing ``batch``, with a refill claim when there is one."""
        refill = None if self._closing else self._refill
        asked = refill.reserve() if refill is not None else 0
        if not asked:
            refill = None
        claimed: list[ClaimedRow] = []
        committed = False
        try:
            async with self._pool.connection() as conn:
                if refill is not None:
                    written, claimed = await self._execute_and_claim(
                        conn, finishes, releases, refill.claimer, asked
                    )
                else:
                    written = await self._execute(conn, finishes, releases)
            committed = True
            return written
        finally:
            # Before the batch's jobs hear their verdict, so the jobs claimed
            # in their place are running when the old ones leave.
            if refill is not None:
                refill.started(claimed, asked, batch, committed)

    async def _already_written(
        self, batch: list[Finish | Release], written: set[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """The outcomes of ``batch`` not in ``written`` that an earlier try wrote.

        A try whose connection failed may still have committed: the retry
        then finds those tokens gone and would report the outcomes refused
        (their jobs logging a result discarded that is in fact stored).
        The rows say which of them hold exactly what this attempt wrote.
        """
        missing = [o for o in batch if (o.artifact_id, o.lease_token) not in written]
        if not missing:
            return set()
        lookup = [
            {
                "id": o.artifact_id,
                "attempt": o.attempt,
                "state": o.state,
                "content": o.content,
                "metadata": o.metadata,
                "error": o.error or None,
            }
            if isinstance(o, Finish)
            else {"id": o.artifact_id, "error": o.error}
            for o in missing
        ]
        async with self._pool.connection() as conn:
            cur = await conn.execute(queue.ALREADY_WRITTEN, {"batch": _json(lookup)})
            found = {row[0] for row in await cur.fetchall()}
        if found:
            log.info(
                "completer.write_confirmed",
                artifacts=len(found),
                reason="an earlier try committed before its connection failed",
            )
        return {
            (o.artifact_id, o.lease_token) for o in missing if o.artifact_id in found
        }

    async def _execute(
        self, conn: Any, finishes: list[Finish], releases: list[Release]
    ) -> set[tuple[str, str]]:
        # Both kinds in one batch commit together: were the first to commit
        # and the second to fail, the retry would find the first one's
        # tokens gone and report written outcomes as refused.
        if finishes and releases:
            async with conn.transaction():
                finished = await _pairs(await self._send_finish(conn, finishes))
                return finished | await _pairs(await self._send_release(conn, releases))
        if finishes:
            return await _pairs(await self._send_finish(conn, finishes))
        return await _pairs(await self._send_release(conn, releases))

    async def _execute_and_claim(
        self,
        conn: Any,
        finishes: list[Finish],
        releases: list[Release],
        claimer: Claimer,
        limit: int,
    ) -> tuple[set[tuple[str, str]], list[ClaimedRow]]:
        """The batch and the next claim in one transaction and one round trip.

        Under a fleet cap the rows that end here hold capacity until their
        write commits. Written alone, the next claim could only follow the
        commit; here the claim comes after the writes in the same
        transaction (a pipeline, ending at its sync), sees the capacity they
        free and takes it, so the fleet's leased count never dips between a
        row ending and the next starting, and no other worker's claim can
        take the capacity first. Any failure rolls back the writes and the
        claim alike.
        """
        async with conn.pipeline():
            fin = await self._send_finish(conn, finishes) if finishes else None
            rel = await self._send_release(conn, releases) if releases else None
            claim = await claimer.send_capped_claim(conn, limit)
        written = await _pairs(fin) | await _pairs(rel)
        return written, await claim.fetchall()

    async def _send_finish(self, conn: Any, finishes: list[Finish]) -> Any:
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
        return await conn.execute(
            queue.FINISH_ARTIFACTS_JSON,
            {"batch": _json(batch), "channels": self._channels},
        )

    async def _send_release(self, conn: Any, releases: list[Release]) -> Any:
        return await conn.execute(
            queue.RELEASE_FOR_RETRY,
            {
                "ids": [r.artifact_id for r in releases],
                "tokens": [r.lease_token for r in releases],
                "delays_s": [r.delay_s for r in releases],
                "errors": [_json(r.error) for r in releases],
            },
        )


async def _pairs(cur: Any) -> set[tuple[str, str]]:
    """The (artifact id, lease token) pairs a write returned."""
    if cur is None:
        return set()
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
