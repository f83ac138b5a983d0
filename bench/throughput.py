"""Jobs per second: artifactd, Procrastinate and PgQueuer, same jobs, same server.

Each queue gets a fresh database on the same server, its jobs enqueued in
one batch before its single worker process starts, and that worker drains
them: artifactd with the ``echo`` generator (``python -m worker run --drain
--generator echo --concurrency N``), Procrastinate with a no-op task at
concurrency N, PgQueuer with a no-op entrypoint at batch size N, on psycopg
and, when asyncpg is installed, on asyncpg too.

Throughput is completed jobs over the time from the first job started to
the last one finished, both read from the queue's own tables in the
database's clock, so process start-up and the drain check at the end are
left out for every queue alike. ``wall_s`` (process start to exit) is
reported beside it, and so is the CPU the worker used per job over the
drain window. With several rounds, the order of the queues rotates each
round and the median counts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import seed
from bench.process import BenchError, CpuClock, Process, clean_env, worker
from bench.server import fresh_database

# ``pgqueuer`` runs on psycopg, the driver artifactd uses and the one the
# design's reference figure was taken with; ``pgqueuer-asyncpg`` (when asyncpg
# is installed) is PgQueuer on the driver its own CLI prefers.
SYSTEMS = ("artifactd", "procrastinate", "pgqueuer", "pgqueuer-asyncpg")
GOAL_RATIO_PGQUEUER = 1.5


def available_systems() -> tuple[str, ...]:
    """The queues this environment can run (the others need the bench extra)."""
    return tuple(name for name in SYSTEMS if _installed(_MODULES[name]))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(
    admin_url: str,
    *,
    jobs: int = 5000,
    concurrency: int = 50,
    rounds: int = 3,
    systems: tuple[str, ...] | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    systems = systems or available_systems()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    with tempfile.TemporaryDirectory(prefix="artifactd-bench-") as tmp:
        logs = Path(tmp)
        for round_no in range(rounds):
            shift = round_no % len(systems)
            for name in systems[shift:] + systems[:shift]:
                one = _RUNNERS[name]
                runs[name].append(one(admin_url, logs, jobs, concurrency, timeout_s))

    results = {name: _summary(name_runs) for name, name_runs in runs.items()}
    ratios = {}
    if "artifactd" in results:
        mine = results["artifactd"]["jobs_per_s"]
        ratios = {
            name: round(mine / result["jobs_per_s"], 2)
            for name, result in results.items()
            if name != "artifactd" and result["jobs_per_s"]
        }
    goal: dict[str, Any] = {"ratio_to_pgqueuer_at_least": GOAL_RATIO_PGQUEUER}
    if "pgqueuer" in ratios:
        goal["met"] = ratios["pgqueuer"] >= GOAL_RATIO_PGQUEUER
    else:
        goal["met"] = None
        goal["not_judged"] = "PgQueuer on psycopg was not run"
    return {
        "benchmark": "throughput",
        "jobs": jobs,
        "concurrency": concurrency,
        "rounds": rounds,
        "results": results,
        "ratios": ratios,
        "goal": goal,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["jobs_per_s"] for r in runs]
    return {
        "jobs_per_s": round(statistics.median(rates), 1),
        "jobs_per_s_each": [round(x, 1) for x in rates],
        "completed": min(r["completed"] for r in runs),
        "drain_s": round(statistics.median(r["drain_s"] for r in runs), 3),
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
        # CPU the worker process used per job over the drain window (None
        # when that was not sampled): the cost a busy machine distorts least.
        "worker_cpu_ms_per_job": _median_or_none(
            [1000 * r["drain_cpu_s"] / r["completed"] for r in runs if r["drain_cpu_s"]]
        ),
        # The same for the server processes of the queue's sessions (None when
        # the server is not on this machine): the database's share of a job.
        "db_cpu_ms_per_job": _median_or_none(
            [1000 * r["db_cpu_s"] / r["completed"] for r in runs if r["db_cpu_s"]]
        ),
    }


def _clocks(proc: Process, url: str) -> tuple[CpuClock, CpuClock | None]:
    """The worker's CPU clock, and its server sessions' when the server is local."""
    try:
        db_clock: CpuClock | None = CpuClock.for_database(url)
    except psycopg.Error:
        db_clock = None
    return CpuClock.for_process(proc.pid), db_clock


def _median_or_none(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _result(
    jobs: int,
    window: tuple[datetime | None, datetime | None, int],
    wall_s: float,
    proc: Process,
    clock: CpuClock,
    db_clock: CpuClock | None,
) -> dict[str, Any]:
    first, last, completed = window
    if completed != jobs or first is None or last is None:
        raise BenchError(f"{completed} of {jobs} jobs completed")
    drain_s = max((last - first).total_seconds(), 1e-6)
    drain_cpu_s = clock.cpu_between(first.timestamp(), last.timestamp())
    db_cpu_s = None
    if db_clock is not None:
        db_clock.stop()
        db_cpu_s = db_clock.cpu_between(first.timestamp(), last.timestamp())
    return {
        "completed": completed,
        "drain_s": drain_s,
        "wall_s": wall_s,
        "jobs_per_s": completed / drain_s,
        "cpu_s": proc.cpu_s or 0.0,
        "drain_cpu_s": drain_cpu_s,
        "db_cpu_s": db_cpu_s,
    }


def _artifactd(
    admin_url: str, logs: Path, jobs: int, concurrency: int, timeout_s: float
) -> dict[str, Any]:
    with fresh_database(admin_url, "tp_artifactd") as url:
        seed.enqueue(url, jobs)
        proc = worker(
            url,
            logs / "artifactd.log",
            "--drain",
            "--generator",
            "echo",
            "--concurrency",
            str(concurrency),
        )
        clocks = _clocks(proc, url)
        wall_s = proc.wait(timeout_s)
        return _result(jobs, seed.drain_window(url), wall_s, proc, *clocks)


def _procrastinate(
    admin_url: str, logs: Path, jobs: int, concurrency: int, timeout_s: float
) -> dict[str, Any]:
    from bench.rivals import procrastinate_noop as rival

    with fresh_database(admin_url, "tp_procrastinate", schema=False) as url:
        asyncio.run(rival.install_and_enqueue(url, jobs))
        _analyze(url)
        proc = Process(
            "bench.rivals.procrastinate_noop",
            [url, str(concurrency)],
            clean_env(),
            logs / "procrastinate.log",
        )
        clocks = _clocks(proc, url)
        wall_s = proc.wait(timeout_s)
        return _result(jobs, rival.drain_window(url), wall_s, proc, *clocks)


def _pgqueuer(
    admin_url: str,
    logs: Path,
    jobs: int,
    concurrency: int,
    timeout_s: float,
    driver: str = "psycopg",
) -> dict[str, Any]:
    from bench.rivals import pgqueuer_noop as rival

    with fresh_database(admin_url, "tp_pgqueuer", schema=False) as url:
        asyncio.run(rival.install_and_enqueue(url, jobs))
        _analyze(url)
        proc = Process(
            "bench.rivals.pgqueuer_noop",
            [url, str(concurrency), driver],
            clean_env(),
            logs / f"pgqueuer-{driver}.log",
        )
        clocks = _clocks(proc, url)
        wall_s = proc.wait(timeout_s)
        return _result(jobs, rival.drain_window(url), wall_s, proc, *clocks)


def _pgqueuer_asyncpg(
    admin_url: str, logs: Path, jobs: int, concurrency: int, timeout_s: float
) -> dict[str, Any]:
    return _pgqueuer(admin_url, logs, jobs, concurrency, timeout_s, driver="asyncpg")


def _analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "artifactd": _artifactd,
    "procrastinate": _procrastinate,
    "pgqueuer": _pgqueuer,
    "pgqueuer-asyncpg": _pgqueuer_asyncpg,
}

# What each queue needs importable, beyond artifactd itself.
_MODULES = {
    "artifactd": "worker",
    "procrastinate": "procrastinate",
    "pgqueuer": "pgqueuer",
    "pgqueuer-asyncpg": "asyncpg",
}
