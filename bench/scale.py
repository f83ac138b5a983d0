"""Claim time with no finished rows, and with a million of them.

Two fresh databases: one holds only claimable rows, the other also holds
``finished`` finished artifacts (one ``INSERT … SELECT generate_series``),
vacuumed and analysed as autovacuum would leave them. The worker's own
``Claimer`` then claims batches from each in turn, round after round, so a
change in the machine's load hits both alike. Each claimed batch is finished
at once with the worker's own statement (not timed), so the claimable part
of both tables evolves the same way and only the finished rows differ.
Claims are timed on the client, one at a time, without a fleet cap and with
one (the capped claim also counts the fleet's leased rows).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench import seed
from bench.process import BenchError
from bench.server import fresh_database
from bench.stats import summarize
from shared import queue
from worker.claimer import Claimer

GOAL_RATIO = 1.5

# Finished rows look like real ones: a small markdown document and metadata.
_INSERT_FINISHED = """
INSERT INTO generated_artifacts
    (task_id, artifact_type, version, state, content, metadata,
     attempts, created_at, updated_at, started_at, finished_at)
SELECT %(task_id)s, 'meeting_minutes', g, 'success',
       jsonb_build_object('format', 'markdown',
                          'text', '# Minutes ' || g || E'\\n\\n- decided to ship'),
       jsonb_build_object('model', 'bench', 'duration_ms', g %% 5000),
       1, t, t, t, t + interval '3 seconds'
FROM generate_series(1, %(count)s) AS g,
     LATERAL (SELECT now() - make_interval(secs => %(count)s - g)) AS ts(t)
"""


def run(
    admin_url: str,
    *,
    finished: int = 1_000_000,
    claims: int = 200,
    batch: int = 10,
    rounds: int = 3,
) -> dict[str, Any]:
    kinds = ("claim", "capped_claim")
    times: dict[str, dict[str, list[float]]] = {
        phase: {kind: [] for kind in kinds} for phase in ("empty", "finished")
    }
    with (
        fresh_database(admin_url, "scale_empty") as empty_url,
        fresh_database(admin_url, "scale_finished") as finished_url,
    ):
        urls = {"empty": empty_url, "finished": finished_url}
        tasks = {phase: seed.create_task(url) for phase, url in urls.items()}
        started = time.monotonic()
        with psycopg.connect(finished_url, autocommit=True) as conn:
            finished_task = seed.create_task(finished_url)
            conn.execute(
                _INSERT_FINISHED, {"task_id": finished_task, "count": finished}
            )
        insert_s = time.monotonic() - started
        for url in urls.values():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE generated_artifacts")

        version = 1
        for round_no in range(rounds):
            order = (
                ("empty", "finished") if round_no % 2 == 0 else ("finished", "empty")
            )
            for kind in kinds:
                for phase in order:
                    _enqueue(urls[phase], tasks[phase], claims * batch, version)
                    times[phase][kind] += asyncio.run(
                        _claim_all(
                            urls[phase], claims, batch, capped=kind == "capped_claim"
                        )
                    )
                version += claims * batch
        with psycopg.connect(finished_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM generated_artifacts").fetchone()
            table_rows = int(row[0]) if row else 0

    results = {
        phase: {
            kind: {"claims": len(t), **summarize(t, "ms")}
            for kind, t in by_kind.items()
        }
        for phase, by_kind in times.items()
    }
    ratios = {
        kind: round(
            results["finished"][kind]["p50_ms"]
            / max(results["empty"][kind]["p50_ms"], 1e-6),
            3,
        )
        for kind in kinds
    }
    return {
        "benchmark": "scale",
        "finished_rows": finished,
        "claims": claims,
        "batch": batch,
        "rounds": rounds,
        "insert_s": round(insert_s, 1),
        "table_rows": table_rows,
        "results": results,
        "ratios": ratios,
        "goal": {
            "ratio_at_most": GOAL_RATIO,
            "met": max(ratios.values()) <= GOAL_RATIO,
        },
    }


def _enqueue(url: str, task_id: str, count: int, first_version: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO generated_artifacts (task_id, artifact_type, version, state)
            SELECT %(task_id)s, 'meeting_minutes', g, 'processing'
            FROM generate_series(%(first)s, %(first)s + %(count)s - 1) AS g
            """,
            {"task_id": task_id, "first": first_version, "count": count},
        )
        conn.execute("ANALYZE generated_artifacts")


async def _claim_all(url: str, claims: int, batch: int, *, capped: bool) -> list[float]:
    """Milliseconds per claim of ``batch`` rows, each batch finished after its claim."""
    async with AsyncConnectionPool(
        url, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
    ) as pool:
        await pool.wait()
        claimer = Claimer(
            pool,
            worker_id="bench",
            lease_s=60.0,
            fleet_cap=10 * batch if capped else None,
        )
        times: list[float] = []
        for _ in range(claims):
            started = time.perf_counter()
            rows = await claimer.claim_batch(batch)
            times.append((time.perf_counter() - started) * 1000)
            if len(rows) != batch:
                raise BenchError(f"claimed {len(rows)} of {batch} rows")
            await _finish(pool, rows)
        return times


async def _finish(pool: AsyncConnectionPool, rows: list[Any]) -> None:
    done = [
        {
            "id": r.id,
            "token": r.lease_token,
            "state": "success",
            "content": {"format": "markdown", "text": "# ok"},
            "metadata": {},
            "error": None,
        }
        for r in rows
    ]
    async with pool.connection() as conn:
        await conn.execute(
            queue.FINISH_ARTIFACTS_JSON, {"batch": json.dumps(done), "channels": []}
        )
