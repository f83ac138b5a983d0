"""The worker loop in-process: what happens when its own leases lapse."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from shared import queue
from shared.artifact_types import load_artifact_types
from shared.settings import Settings
from tests.support.processes import query, seed
from worker.daemon import pool_connection_kwargs
from worker.generators.base import GenerationRequest, GenerationResult
from worker.runner import Worker, WorkerConfig


class GatedGenerator:
    """Writes a document only when the test opens the gate; counts calls."""

    name = "gated"

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def generate(
        self, request: GenerationRequest, report_progress: Any
    ) -> GenerationResult:
        self.calls += 1
        self.started.set()
        await self.gate.wait()
        return GenerationResult(
            "markdown", f"call {self.calls}", metadata={"model": "gated"}
        )

    async def aclose(self) -> None:
        return None


async def _until(condition: Any, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - a bounded poll of plain state
            await asyncio.sleep(0.02)


def _config(url: str, **settings: Any) -> WorkerConfig:
    """A worker's settings for these tests: ``settings`` over quiet defaults."""
    defaults: dict[str, Any] = {
        "concurrency": 2,
        "lease_s": 30,
        "poll_interval_s": 0.1,
        "shutdown_grace_s": 5,
        "attempt_timeout_s": 60,
        "locale": "en",
    }
    return WorkerConfig(database_url=url, listen_url=url, **{**defaults, **settings})


def _pool(url: str) -> AsyncConnectionPool:
    return AsyncConnectionPool(url, min_size=1, max_size=4, kwargs={"autocommit": True})


def _worker(config: WorkerConfig, generator: Any, pool: AsyncConnectionPool) -> Worker:
    return Worker(
        config, generator=generator, artifact_types=load_artifact_types(), pool=pool
    )


def test_worker__reclaiming_its_own_lapsed_row_stops_the_old_job_and_keeps_the_new(
    clean_db: str,
) -> None:
    [artifact_id] = seed(clean_db, 1)

    async def scenario() -> tuple[int, int, int]:
        generator = GatedGenerator()
        async with _pool(clean_db) as pool:
            worker = _worker(_config(clean_db), generator, pool)
            run = asyncio.create_task(worker.run())
            await asyncio.wait_for(generator.started.wait(), 20)
            # The lease lapses while the job runs (say its renewals could not
            # reach the database); the same worker claims the row again.
            with psycopg.connect(clean_db, autocommit=True) as conn:
                conn.execute(
                    "UPDATE generated_artifacts SET lease_expires_at = now() - interval '1 second'"
                )
            await _until(lambda: generator.calls == 2)
            in_flight_after_reclaim = worker.in_flight
            await worker.renew_leases()
            generator.gate.set()
            await _until(lambda: worker.in_flight == 0)
            worker.stop()
            stats = await asyncio.wait_for(run, 30)
        return in_flight_after_reclaim, stats.succeeded, stats.lost

    in_flight, succeeded, lost = asyncio.run(scenario())

    assert (
        in_flight == 1
    )  # the old job was stopped, not left running beside the new one
    assert (succeeded, lost) == (1, 1)
    assert query(
        clean_db,
        "SELECT state, attempts, content->>'text', lease_token FROM generated_artifacts",
    ) == [("success", 2, "call 2", None)]
    assert artifact_id


class CountingGenerator:
    """Answers after a short pause; records the most calls running at once."""

    name = "counting"

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    async def generate(
        self, request: GenerationRequest, report_progress: Any
    ) -> GenerationResult:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.running -= 1
        return GenerationResult("markdown", "done", metadata={"model": "counting"})

    async def aclose(self) -> None:
        return None


def test_worker__under_a_fleet_cap_claims_ride_on_final_writes_and_drain_ends(
    clean_db: str,
) -> None:
    seed(clean_db, 12)
    cap = 2

    async def scenario() -> tuple[int, Any]:
        generator = CountingGenerator()
        config = _config(
            clean_db,
            concurrency=4,
            # Far beyond the test's timeout: draining must not wait for a poll.
            poll_interval_s=60,
            fleet_concurrency=cap,
            drain=True,
        )
        async with _pool(clean_db) as pool:
            worker = _worker(config, generator, pool)
            stats = await asyncio.wait_for(worker.run(), 20)
        return generator.most, stats

    most, stats = asyncio.run(scenario())

    assert most == cap  # four slots, but never more than the cap at once
    assert (stats.claimed, stats.succeeded, stats.lost) == (12, 12, 0)
    assert query(
        clean_db,
        "SELECT count(*), max(attempts) FROM generated_artifacts WHERE state = 'success'",
    ) == [(12, 1)]
    # Rows whose lease began in the transaction that finished another row:
    # every claim after the first ones rode on a final write.
    [(riding,)] = query(
        clean_db,
        "SELECT count(*) FROM generated_artifacts n WHERE EXISTS ("
        "SELECT 1 FROM generated_artifacts d "
        "WHERE d.id <> n.id AND d.finished_at = n.started_at)",
    )
    assert riding == 12 - cap


async def _waits_for_an_advisory_lock(conn: Any) -> bool:
    cur = await conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )
    row = await cur.fetchone()
    return bool(row and row[0])


def test_worker__rows_a_write_claims_after_shutdown_stops_waiting_go_back(
    clean_db: str,
) -> None:
    ids = seed(clean_db, 3)

    async def scenario() -> Any:
        generator = GatedGenerator()
        config = _config(
            clean_db,
            # One slot: the claim loop, with its slot taken, sends no claim of
            # its own, so the claim waiting below is the one riding the write.
            concurrency=1,
            poll_interval_s=60,
            shutdown_grace_s=30,
            fleet_concurrency=1,
        )
        async with (
            _pool(clean_db) as pool,
            await psycopg.AsyncConnection.connect(clean_db) as holder,
        ):
            worker = _worker(config, generator, pool)
            run = asyncio.create_task(worker.run())
            await asyncio.wait_for(generator.started.wait(), 20)
            # Hold the fleet's claim lock: the job's final write goes out, and
            # the claim riding on it waits inside the same transaction.
            await holder.execute(
                "SELECT pg_advisory_xact_lock(%s)", (queue.FLEET_CLAIM_LOCK,)
            )
            generator.gate.set()

            async with pool.connection() as watcher, asyncio.timeout(20):
                while not await _waits_for_an_advisory_lock(watcher):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            # A stop with no grace: shutdown stops waiting while that write,
            # and the claim in it, are still in flight.
            worker.stop()
            worker.stop()
            await asyncio.sleep(0.3)
            await holder.commit()  # the write and its claim go through now
            return await asyncio.wait_for(run, 30)

    stats = asyncio.run(scenario())

    rows = dict(
        (r[0], r[1:])
        for r in query(
            clean_db,
            "SELECT id::text, state, lease_token IS NULL, attempts "
            "FROM generated_artifacts",
        )
    )
    finished = [i for i in ids if rows[i][0] == "success"]
    assert len(finished) == 1
    # The row the late claim took was handed back at once, its attempt not
    # counted; nothing is left leased to a worker that has stopped.
    assert sorted(rows[i] for i in ids if i not in finished) == [
        ("processing", True, 0),
        ("processing", True, 0),
    ]
    assert stats.released == 1  # the late row; the finished one needed no release


def _prepared(url: str, kwargs: dict[str, Any], runs: int) -> list[str]:
    """What a connection opened with ``kwargs`` holds prepared after ``runs`` claims."""

    async def scenario() -> list[str]:
        async with await psycopg.AsyncConnection.connect(url, **kwargs) as conn:
            for _ in range(runs):
                await conn.execute(queue.COUNT_UNFINISHED)
            cur = await conn.execute(
                "SELECT statement FROM pg_prepared_statements WHERE statement = %s",
                (queue.COUNT_UNFINISHED,),
            )
            return [row[0] for row in await cur.fetchall()]

    return asyncio.run(scenario())


def test_worker_pool__prepares_each_statement_on_its_first_run_except_behind_pgbouncer(
    db_url: str,
) -> None:
    direct = pool_connection_kwargs(Settings(database_url=SecretStr(db_url)))
    assert _prepared(db_url, direct, runs=1) == [queue.COUNT_UNFINISHED]

    # A separate LISTEN URL means PgBouncer in transaction mode, where a
    # statement prepared on one server connection is missing on the next.
    pooled = pool_connection_kwargs(
        Settings(database_url=SecretStr(db_url), listen_url=SecretStr(db_url))
    )
    assert _prepared(db_url, pooled, runs=6) == []
