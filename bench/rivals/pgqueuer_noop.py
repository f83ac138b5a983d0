"""PgQueuer: a no-op entrypoint drained by one QueueManager in batches.

The worker is ``QueueManager.run(batch_size=N, mode=drain)`` on the driver
named on the command line: psycopg (as artifactd) or asyncpg (which
PgQueuer's own ``pgq`` CLI tries first). PgQueuer needs
``max_concurrent_tasks`` to be at least twice
the batch size, so it is left unset (unlimited) and the batch size is the
concurrency knob. Its timing comes from ``pgqueuer_log``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import psycopg
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

ENTRYPOINT = "bench_noop"


@asynccontextmanager
async def queries(url: str, driver: str) -> AsyncIterator[Queries]:
    if driver == "asyncpg":
        import asyncpg
        from pgqueuer.db import AsyncpgDriver

        conn = await asyncpg.connect(url)
        try:
            yield Queries(AsyncpgDriver(conn))
        finally:
            await conn.close()
    else:
        from pgqueuer.db import PsycopgDriver

        aconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with aconn:
            yield Queries(PsycopgDriver(aconn))


async def install_and_enqueue(url: str, jobs: int) -> None:
    """PgQueuer's schema, then ``jobs`` no-op jobs in one batch."""
    async with queries(url, "psycopg") as q:
        await q.install()
        await q.enqueue([ENTRYPOINT] * jobs, [None] * jobs, [0] * jobs)


def drain_window(url: str) -> tuple[datetime | None, datetime | None, int]:
    """(first job picked, last job logged done, jobs succeeded)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """
            SELECT min(created) FILTER (WHERE status = 'picked'),
                   max(created) FILTER (WHERE status = 'successful'),
                   count(*) FILTER (WHERE status = 'successful')
            FROM pgqueuer_log
            """
        ).fetchone()
    assert row is not None
    return row[0], row[1], int(row[2])


async def work(url: str, batch_size: int, driver: str) -> None:
    from pgqueuer.types import QueueExecutionMode

    async with queries(url, driver) as q:
        qm = QueueManager(q)

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            return None

        await qm.run(batch_size=batch_size, mode=QueueExecutionMode.drain)


if __name__ == "__main__":
    asyncio.run(
        work(
            sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "auto"
        )
    )
