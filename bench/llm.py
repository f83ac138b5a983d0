"""A fleet against a model with fixed latency: the cap holds, little time is lost.

A loopback fake of the Messages API (``tests.fakes.messages_server``) streams
every answer over ``latency_s`` and counts the requests in flight. Several
worker processes run the ``anthropic`` generator against it under a fleet cap
(``ARTIFACTD_FLEET_CONCURRENCY``) smaller than their combined concurrency, so
the cap, not the workers, is what limits them.

Once every worker listens, waves of ``cap`` warm-up artifacts run until every
worker has finished one: a worker's first request imports and builds much of
the SDK (a second or more of CPU), a start-up cost, not a steady one. Then all
the measured artifacts are inserted in one statement.

With ``cap`` requests always in flight the work would take ``jobs × latency
/ cap``: the ideal. ``total_s`` runs from the insert to the last final write
(database clock); the ratio to the ideal is the time lost to claiming,
writing and the SDK, and the server's most-in-flight must never exceed the
cap.

Where the time over the fake's own went is split from the fake's records, in
the bench process's clock: with ``n(t)`` requests in flight, each phase loses
``(cap - n(t)) / cap`` of its length. *ramp* runs from the insert until the cap
is first full, *between* from then until the last request arrives, *drain*
until that request ends, and *last write* is what is left of ``total_s``: the
final write of the last job. They add up to ``total_s`` less the fake's own
time (its answers' durations over the cap), so an outlier run shows which
phase it lost its time in.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import seed
from bench.process import BenchError, Process, wait_until, worker
from bench.server import cpu_ticks, fresh_database, steal_pct
from shared import queue
from tests.fakes.messages_server import FakeMessagesServer

GOAL_RATIO = 1.1


def run(
    admin_url: str,
    *,
    jobs: int = 320,
    latency_s: float = 0.2,
    workers: int = 4,
    concurrency: int = 8,
    fleet_cap: int = 16,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="artifactd-bench-") as tmp,
        FakeMessagesServer(latency_s=latency_s) as fake,
        fresh_database(admin_url, "llm") as url,
    ):
        task_id = seed.create_task(url)
        env = {
            "ARTIFACTD_GENERATOR": "anthropic",
            "ANTHROPIC_API_KEY": "bench",
            "ANTHROPIC_BASE_URL": fake.base_url,
            "ARTIFACTD_FLEET_CONCURRENCY": str(fleet_cap),
        }
        procs = [
            worker(
                url,
                Path(tmp) / f"llm-{i}.log",
                "--concurrency",
                str(concurrency),
                **env,
            )
            for i in range(workers)
        ]
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                seen: set[int] = set()

                def ready() -> bool:
                    for p in procs:
                        p.raise_if_exited("a worker exited before it was ready")
                    seen.update(seed.listening_backends(conn))
                    return len(seen) >= workers

                wait_until(
                    ready, timeout_s=timeout_s, what=f"{workers} workers to listen"
                )
                warmup_jobs = _warm_up(conn, url, procs, workers, fleet_cap, timeout_s)
                inserted_at = time.monotonic()
                ticks = cpu_ticks()
                _enqueue(conn, task_id, jobs)
                _wait_done(conn, procs, timeout_s)
                stolen = steal_pct(ticks, cpu_ticks())
                row = conn.execute(
                    """
                    SELECT extract(epoch FROM max(finished_at) - min(created_at)),
                           count(*) FILTER (WHERE state = 'success'),
                           count(*) FILTER (WHERE state = 'failed'),
                           avg(extract(epoch FROM finished_at - started_at))
                    FROM generated_artifacts WHERE task_id = %s
                    """,
                    (task_id,),
                ).fetchone()
        finally:
            for proc in procs:
                proc.stop()
        assert row is not None
        total_s, succeeded, failed = float(row[0]), int(row[1]), int(row[2])
        mean_leased_s = float(row[3] or 0.0)
        measured = fake.requests[warmup_jobs:]
        requests = len(measured)
        # The fake's own time per answer, a little over latency_s (it sleeps
        # between chunks): the floor no queue can go under.
        spans = [(r.received_at, r.finished_at) for r in measured if r.finished_at]
        durations = [end - start for start, end in spans]
        mean_request_s = sum(durations) / len(durations) if durations else 0.0
        max_in_flight = fake.max_in_flight
        lost = _lost_time(spans, fleet_cap, inserted_at)
        lost["last_write"] = total_s - sum(durations) / fleet_cap - sum(lost.values())

    ideal_s = jobs * latency_s / fleet_cap
    ratio = total_s / ideal_s
    return {
        "benchmark": "llm",
        "jobs": jobs,
        "latency_s": latency_s,
        "workers": workers,
        "concurrency": concurrency,
        "fleet_cap": fleet_cap,
        "results": {
            "succeeded": succeeded,
            "failed": failed,
            "requests": requests,
            "warmup_jobs": warmup_jobs,
            "mean_request_s": round(mean_request_s, 4),
            # Where the time went: the share of the cap's capacity that held a
            # request, and per artifact, how long its row was leased with no
            # request in flight (claim, executor, SDK, final write).
            "cap_utilisation": round(sum(durations) / (fleet_cap * total_s), 3),
            "lease_overhead_ms": round(1000 * (mean_leased_s - mean_request_s), 1),
            # total_s = the fake's own time over the cap + these (see above).
            "lost_ms": {phase: round(1000 * s, 1) for phase, s in lost.items()},
            "max_in_flight": max_in_flight,
            # The host's share of the CPUs while the artifacts ran (Linux,
            # virtual machines): what a run over the goal had to work with.
            "cpu_steal_pct": stolen,
            "total_s": round(total_s, 3),
            "ideal_s": round(ideal_s, 3),
            "ratio_to_ideal": round(ratio, 3),
        },
        "goal": {
            "ratio_to_ideal_at_most": GOAL_RATIO,
            "max_in_flight_at_most": fleet_cap,
            "met": max_in_flight <= fleet_cap
            and ratio <= GOAL_RATIO
            and succeeded == jobs,
        },
    }


def _lost_time(
    spans: list[tuple[float, float]], cap: int, start: float
) -> dict[str, float]:
    """Seconds lost below the cap in each phase: ramp, between and drain.

    ``spans`` are the requests' (arrived, ended) times and ``start`` the
    insert, all in this process's monotonic clock. A run that never fills the
    cap is all ramp until its last arrival.
    """
    if not spans:
        return {"ramp": 0.0, "between": 0.0, "drain": 0.0}
    # The number in flight as steps: from steps[i][0] on, steps[i][1].
    steps: list[tuple[float, int]] = [(start, 0)]
    for at, change in sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans]):
        steps.append((at, steps[-1][1] + change))
    last_start = max(a for a, _ in spans)
    last_end = max(b for _, b in spans)
    full = next((at for at, n in steps if n >= cap), last_start)
    full = min(full, last_start)

    def lost(begin: float, end: float) -> float:
        total = 0.0
        for (at, n), (until, _) in zip(steps, [*steps[1:], (last_end, 0)], strict=True):
            lo, hi = max(at, begin), min(until, end)
            if hi > lo:
                total += (cap - n) * (hi - lo) / cap
        return total

    return {
        "ramp": lost(start, full),
        "between": lost(full, last_start),
        "drain": lost(last_start, last_end),
    }


def _enqueue(
    conn: psycopg.Connection, task_id: str, jobs: int, first_version: int = 1
) -> None:
    conn.execute(
        """
        INSERT INTO generated_artifacts (task_id, artifact_type, version, state)
        SELECT %(task_id)s, 'meeting_minutes', g, 'processing'
        FROM generate_series(%(first)s, %(first)s + %(jobs)s - 1) AS g
        """,
        {"task_id": task_id, "jobs": jobs, "first": first_version},
    )


def _wait_done(
    conn: psycopg.Connection, procs: list[Process], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while _unfinished(conn):
        for p in procs:
            p.raise_if_exited("a worker exited")
        if time.monotonic() > deadline:
            raise BenchError(f"not done after {timeout_s:g}s")
        time.sleep(0.02)


def _warm_up(
    conn: psycopg.Connection,
    url: str,
    procs: list[Process],
    workers: int,
    wave: int,
    timeout_s: float,
) -> int:
    """Waves of ``wave`` artifacts until every worker has finished one; returns the count."""
    task_id = seed.create_task(url)
    done = 0
    for _ in range(30):
        _enqueue(conn, task_id, wave, first_version=done + 1)
        done += wave
        _wait_done(conn, procs, timeout_s)
        row = conn.execute(
            """
            SELECT count(DISTINCT metadata->>'worker_id')
            FROM generated_artifacts WHERE task_id = %s
            """,
            (task_id,),
        ).fetchone()
        if row and row[0] >= workers:
            return done
    raise BenchError(f"some of the {workers} workers never claimed during warm-up")


def _unfinished(conn: psycopg.Connection) -> int:
    row = conn.execute(queue.COUNT_UNFINISHED).fetchone()
    return int(row[0]) if row else 0
