"""The worker daemon: the loops around the executor, and shutdown.

Moving parts, each a coroutine: the claimer loop (claims when slots are free
and something woke it), the heartbeat (renews every lease this process holds
in one statement), the rescuer (fails rows whose workers died too often),
the completer (batched final writes, and under a fleet cap the claims that
ride on them), the listener (LISTEN/NOTIFY wake-ups) and any extra loops the
caller adds (the notifier, metrics). No transaction stays open while a job
runs.

Shutdown (SIGTERM/SIGINT): stop claiming, give running jobs
``shutdown_grace_s`` to finish, then cancel the rest and hand their rows back
at once so another worker can take them. A second signal skips the grace
period. A process killed outright loses nothing either: its leases expire.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from shared import queue
from shared.artifact_types import ArtifactType
from shared.errors import ErrorCode, error_content
from worker.claimer import ClaimedRow, Claimer
from worker.completer import Completer, Finish, Refill, Release
from worker.executor import Executor, Job, Outcome
from worker.generators.base import Generator
from worker.identity import new_worker_id
from worker.listener import Listener
from worker.progress import ProgressWriter

log = structlog.get_logger(__name__)

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str
    listen_url: str
    concurrency: int
    lease_s: float
    poll_interval_s: float
    shutdown_grace_s: float
    attempt_timeout_s: float
    locale: str
    fleet_concurrency: int | None = None
    drain: bool = False
    channels: list[str] = field(default_factory=list)
    worker_id: str = field(default_factory=new_worker_id)


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    released: int = 0


# Hooks for components that live beside the loop (metrics, systemd notify).
OutcomeHook = Callable[[Job, Outcome], None]


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        generator: Generator,
        artifact_types: dict[str, ArtifactType],
        pool: AsyncConnectionPool,
        extra_loops: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
        on_outcome: list[OutcomeHook] | None = None,
    ) -> None:
        self.config = config
        self.id = config.worker_id
        self.stats = WorkerStats()
        self._pool = pool
        self._generator = generator
        self._jobs: dict[str, Job] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._extra_loops = extra_loops or []
        self._on_outcome = on_outcome or []
        self._claimer = Claimer(
            pool,
            worker_id=self.id,
            lease_s=config.lease_s,
            fleet_cap=config.fleet_concurrency,
        )
        # Slots promised to a claim in flight (the claim loop's, or one riding
        # on a final write), so the two never claim the same slots.
        self._reserved = 0
        # Set once shutdown hands rows back: rows a final write in flight
        # claims after that are kept here and handed back after the writes.
        self._handing_back = False
        self._late_rows: list[ClaimedRow] = []
        # A batch going out frees slots for the next claim. Without a fleet
        # cap the claim loop claims for them while the batch is written;
        # under one the rows hold the cap's capacity until the write commits,
        # so the claim for them rides in the write's own transaction.
        capped = config.fleet_concurrency is not None
        self._completer = Completer(
            pool,
            channels=config.channels,
            on_batch=None if capped else self._wake.set,
            refill=Refill(self._claimer, self._reserve_refill, self._refilled)
            if capped
            else None,
        )
        self._progress = ProgressWriter(pool)
        self._executor = Executor(
            generator=generator,
            artifact_types=artifact_types,
            completer=self._completer,
            progress=self._progress,
            locale=config.locale,
            attempt_timeout_s=config.attempt_timeout_s,
            worker_id=self.id,
        )
        self._listener = Listener(
            config.listen_url, [queue.NEW_CHANNEL], self._on_notify
        )

    # -- public ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def stop(self) -> None:
        """Begin a graceful stop; a second call skips the grace period."""
        if self._stopping.is_set():
            if not self._hurry.is_set():
                log.warning("worker.stopping_now", in_flight=self.in_flight)
            self._hurry.set()
        else:
            log.info(
                "worker.stopping",
                in_flight=self.in_flight,
                grace_s=self.config.shutdown_grace_s,
            )
            self._stopping.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def run(self) -> WorkerStats:
        """Run until stopped (or, with ``drain``, until nothing is left)."""
        started = time.monotonic()
        background = [
            asyncio.create_task(self._listener.run(), name="listener"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._rescuer_loop(), name="rescuer"),
            *(asyncio.create_task(loop(), name="extra") for loop in self._extra_loops),
        ]
        completer = asyncio.create_task(self._completer.run(), name="completer")
        try:
            await self._claim_loop()
            await self._shutdown()
        finally:
            await self._completer.close()
            await asyncio.wait_for(completer, timeout=None)
            if self._late_rows:
                await self._release([Job(row) for row in self._late_rows])
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._generator.aclose()
        log.info(
            "worker.stopped",
            worker_id=self.id,
            uptime_s=round(time.monotonic() - started, 1),
            **vars(self.stats),
        )
        return self.stats

    # -- claim loop -------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        self._wake.set()

    @property
    def _claim_limit(self) -> int:
        return max(1, (self.config.concurrency + 1) // 2)

    async def _claim_loop(self) -> None:
        db_backoff_s = 0.2
        while not self._stopping.is_set():
            # Cleared before looking, so a wake-up (NOTIFY, a finished job)
            # that lands during the claim below makes the next sleep return.
            self._wake.clear()
            # A job whose outcome is with the completer is done with the
            # model, so its slot is free: the next claim goes out while that
            # final write is in flight, not after it. Under a fleet cap the
            # row counts until the write commits, so a claim sent earlier
            # would find the cap full (the claim riding on the write takes it).
            free = self._free_slots(
                count_unwritten=self.config.fleet_concurrency is None
            )
            if free <= 0:
                await self._sleep(None)
                continue

            try:
                # At most half the slots per claim: the claim for the other
                # half is then in flight while the jobs just started run, so
                # a busy worker overlaps its claims' round trips with work
                # instead of idling through each one.
                asked = min(free, self._claim_limit)
                self._reserved += asked
                try:
                    rows = await self._claimer.claim_batch(asked)
                finally:
                    self._reserved -= asked
            except DB_ERRORS as exc:
                log.warning(
                    "claim.failed", error=_one_line(exc), retry_in_s=db_backoff_s
                )
                await self._sleep(db_backoff_s)
                db_backoff_s = min(db_backoff_s * 2, 5.0)
                continue
            db_backoff_s = 0.2
            for row in rows:
                self._start(row)
            if len(rows) == asked:
                continue
            # Fewer than asked: nothing more is claimable now (the queue is
            # empty, or the fleet cap full), so claiming again at once would
            # only find nothing and hold the fleet's claim lock doing it.

            if not self._jobs and self.config.drain and await self._nothing_left():
                log.info("worker.drained")
                return
            await self._sleep(await self._idle_wait_s())

    async def _sleep(self, timeout_s: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _idle_wait_s(self) -> float:
        """Poll interval, or less when a retry or a fleet pause ends sooner."""
        wait_s = self.config.poll_interval_s
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(queue.NEXT_RUN_AFTER)
                row = await cur.fetchone()
        except DB_ERRORS:
            return wait_s
        if row and row[0] is not None and row[0] > 0:
            wait_s = min(wait_s, max(float(row[0]), 0.01))
        # Rows claimable now that the claim just made did not get are held by
        # the fleet cap or by another worker's claim. Whoever holds the cap's
        # capacity claims again as its own jobs finish, so waiting here for a
        # wake-up (NOTIFY, one of our jobs finishing) or the poll interval
        # loses no throughput, where polling every few ms would load the
        # database with claims that cannot succeed.
        return wait_s

    async def _nothing_left(self) -> bool:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(queue.COUNT_UNFINISHED)
                row = await cur.fetchone()
        except DB_ERRORS:
            return False
        return row is not None and row[0] == 0

    def _free_slots(self, *, count_unwritten: bool) -> int:
        """Slots no job holds and no claim in flight has promised away."""
        free = self.config.concurrency - len(self._jobs) - self._reserved
        return free + self._completer.unwritten if count_unwritten else free

    def _reserve_refill(self) -> int:
        """Slots for a claim riding on the final write about to go out (0: none).

        The jobs whose outcomes are with the completer are done with the
        model, so their slots count as free; the claim runs after their
        rows end, in the same transaction.
        """
        if self._stopping.is_set():
            return 0
        asked = min(self._free_slots(count_unwritten=True), self._claim_limit)
        if asked <= 0:
            return 0
        self._reserved += asked
        return asked

    def _refilled(
        self,
        rows: list[ClaimedRow],
        asked: int,
        batch: list[Finish | Release],
        committed: bool,
    ) -> None:
        """Start what a final write claimed; settle its reservation."""
        self._reserved -= asked
        if self._handing_back:
            # The write was in flight when shutdown stopped waiting for jobs:
            # these rows are not started, and go back with the last writes.
            self._late_rows.extend(rows)
            return
        for row in rows:
            self._start(row)
        if committed and len(rows) < asked:
            # The claim got less than it asked for: the cap is full or the
            # queue empty, as of a moment ago. The batch's finished jobs then
            # need not wake the claim loop only to find the same; capacity
            # another worker frees goes to that worker's own next claim. (A
            # job released for a retry still wakes it: the loop's idle wait
            # learns of the row's new run_after that way.)
            for outcome in batch:
                if not isinstance(outcome, Finish):
                    continue
                job = self._jobs.get(outcome.artifact_id)
                if job is not None and job.token == outcome.lease_token:
                    job.quiet_end = True

    def _start(self, row: ClaimedRow) -> None:
        job = Job(row)
        previous = self._jobs.get(row.id)
        if previous is not None and not previous.handed_over:
            # We claimed our own row again: its lease expired while our
            # renewals could not reach the database. The old job's token is
            # dead, so stop it rather than call the model twice for one row.
            # (One already handed over only awaits its write, which the token
            # fences: it ends by itself.)
            previous.lost = True
            if previous.task is not None:
                previous.task.cancel()
        self._jobs[row.id] = job
        self.stats.claimed += 1
        job.task = asyncio.create_task(self._run_job(job), name=f"job:{row.id}")

    async def _run_job(self, job: Job) -> None:
        try:
            outcome = await self._executor.execute(job)
        except Exception as exc:
            # Not even a failure could be written. The lease expires and the
            # row is tried again (or ends WORKER_LOST), so nothing is lost.
            log.error(
                "artifact.persist_failed",
                artifact_id=job.id,
                error=repr(exc),
                action="lease will expire",
            )
            return
        except asyncio.CancelledError:
            # Cancelled by the heartbeat (lease lost) or by shutdown; the
            # shutdown path releases what it cancelled.
            if job.lost:
                self.stats.lost += 1
                log.warning(
                    "artifact.lease_lost", artifact_id=job.id, action="job stopped"
                )
            return
        finally:
            # Only our own entry: a newer claim of the same row may own it now.
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]
                self._progress.forget(job.id)
            if not job.quiet_end or not self._jobs:
                self._wake.set()
        self._count(outcome)
        for hook in self._on_outcome:
            hook(job, outcome)

    def _count(self, outcome: Outcome) -> None:
        if not outcome.written:
            self.stats.lost += 1
        elif outcome.state == "success":
            self.stats.succeeded += 1
        elif outcome.state == "failed":
            self.stats.failed += 1
        elif outcome.state == "retry":
            self.stats.retried += 1

    # -- heartbeat and rescuer --------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval_s = self.config.lease_s / 3
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.renew_leases()
            except Exception as exc:
                # A loop that dies quietly would let every lease lapse while
                # the claim loop keeps claiming: log and beat again.
                log.error(
                    "heartbeat.crashed",
                    error=repr(exc),
                    action="retry next beat",
                    exc_info=True,
                )

    async def renew_leases(self) -> None:
        """Renew every lease held here in one statement; stop jobs that lost theirs."""
        jobs = [job for job in self._jobs.values() if not job.lost]
        if not jobs:
            return
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    queue.RENEW_LEASES,
                    {
                        "lease_s": self.config.lease_s,
                        "ids": [job.id for job in jobs],
                        "tokens": [job.token for job in jobs],
                    },
                )
                renewed = {row[0] for row in await cur.fetchall()}
        except DB_ERRORS as exc:
            # Jobs keep running; if the database stays away past the lease, the
            # final write is refused and another worker redoes the row.
            log.warning(
                "heartbeat.failed", error=_one_line(exc), action="retry next beat"
            )
            return
        for job in jobs:
            if job.handed_over:
                continue  # its write is in flight or just committed
            if job.id not in renewed and self._jobs.get(job.id) is job:
                job.lost = True
                if job.task is not None:
                    job.task.cancel()

    async def _rescuer_loop(self) -> None:
        interval_s = min(max(self.config.lease_s / 2, 1.0), 15.0)
        content = error_content(ErrorCode.WORKER_LOST, self.config.locale)
        error = {
            "error_code": ErrorCode.WORKER_LOST.value,
            "detail": "lease expired with no attempts left",
        }
        while True:
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(
                        queue.FAIL_LOST_ARTIFACTS,
                        {
                            "limit": 100,
                            "content": json.dumps(content),
                            "error": json.dumps(error),
                            "channels": self.config.channels,
                        },
                    )
                    for (artifact_id,) in await cur.fetchall():
                        log.error(
                            "artifact.failed",
                            artifact_id=artifact_id,
                            error_code="WORKER_LOST",
                        )
            except DB_ERRORS as exc:
                log.warning(
                    "rescuer.failed", error=_one_line(exc), action="retry next round"
                )
            except Exception as exc:
                log.error(
                    "rescuer.crashed",
                    error=repr(exc),
                    action="retry next round",
                    exc_info=True,
                )
            await asyncio.sleep(interval_s)

    # -- shutdown ---------------------------------------------------------------

    async def _shutdown(self) -> None:
        await self._wait_for_jobs(self.config.shutdown_grace_s)
        self._handing_back = True
        leftover = [job for job in self._jobs.values() if not job.lost]
        tasks = [job.task for job in leftover if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if leftover:
            await self._release(leftover)

    async def _wait_for_jobs(self, grace_s: float) -> None:
        """Until every job is done, the grace period ends, or a second signal."""
        deadline = time.monotonic() + grace_s
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            while not self._hurry.is_set():
                pending = [
                    j.task for j in self._jobs.values() if j.task and not j.task.done()
                ]
                remaining_s = deadline - time.monotonic()
                if not pending or remaining_s <= 0:
                    return
                await asyncio.wait(
                    [*pending, hurry],
                    timeout=remaining_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            hurry.cancel()

    async def _release(self, jobs: list[Job]) -> None:
        for delay_s in (0.2, 0.5, 1.0, 2.0):
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(
                        queue.RELEASE_ON_SHUTDOWN,
                        {
                            "ids": [j.id for j in jobs],
                            "tokens": [j.token for j in jobs],
                        },
                    )
                    released = await cur.fetchall()
                self.stats.released += len(released)
                log.info(
                    "worker.released",
                    count=len(released),
                    artifact_ids=[r[0] for r in released],
                )
                return
            except DB_ERRORS as exc:
                log.warning(
                    "worker.release_failed", error=_one_line(exc), retry_in_s=delay_s
                )
                await asyncio.sleep(delay_s)
        log.error(
            "worker.release_abandoned", count=len(jobs), action="leases will expire"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
