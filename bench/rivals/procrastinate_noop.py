"""Procrastinate: a no-op task drained by one worker at a given concurrency.

The worker is ``App.run_worker_async(concurrency=N, wait=False)``: it runs
until it has caught up with the queue, with LISTEN/NOTIFY on and jobs kept
(Procrastinate's defaults). Its timing comes from ``procrastinate_events``.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime

import procrastinate
import psycopg

TASK_NAME = "bench_noop"


def make_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name=TASK_NAME)
    async def noop() -> None:
        return None

    return app


async def install_and_enqueue(url: str, jobs: int) -> None:
    """Procrastinate's schema, then ``jobs`` no-op jobs deferred in one batch."""
    app = make_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await app.tasks[TASK_NAME].batch_defer_async(*({} for _ in range(jobs)))


def drain_window(url: str) -> tuple[datetime | None, datetime | None, int]:
    """(first job started, last job finished, jobs succeeded)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """
            SELECT min(at) FILTER (WHERE type = 'started'),
                   max(at) FILTER (WHERE type = 'succeeded'),
                   count(*) FILTER (WHERE type = 'succeeded')
            FROM procrastinate_events
            """
        ).fetchone()
    assert row is not None
    return row[0], row[1], int(row[2])


async def work(url: str, concurrency: int) -> None:
    app = make_app(url)
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, wait=False)


if __name__ == "__main__":
    asyncio.run(work(sys.argv[1], int(sys.argv[2])))
