"""The worker loop in-process: what happens when its own leases lapse."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from shared.artifact_types import load_artifact_types
from tests.support.processes import query, seed
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


def test_worker__reclaiming_its_own_lapsed_row_stops_the_old_job_and_keeps_the_new(
    clean_db: str,
) -> None:
    [artifact_id] = seed(clean_db, 1)

    async def scenario() -> tuple[int, int, int]:
        generator = GatedGenerator()
        config = WorkerConfig(
            database_url=clean_db,
            listen_url=clean_db,
            concurrency=2,
            lease_s=30,
            poll_interval_s=0.1,
            shutdown_grace_s=5,
            attempt_timeout_s=60,
            locale="en",
        )
        async with AsyncConnectionPool(
            clean_db, min_size=1, max_size=4, kwargs={"autocommit": True}
        ) as pool:
            worker = Worker(
                config,
                generator=generator,
                artifact_types=load_artifact_types(),
                pool=pool,
            )
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
