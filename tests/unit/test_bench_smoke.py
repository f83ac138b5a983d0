"""Each benchmark, run tiny: the JSON has its shape and the counts add up.

No timing is asserted: these runs only prove the benchmarks work end to
end (databases made and dropped, workers started and stopped, tables
rendered), so the numbers in bench/README.md can be reproduced.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil
import psycopg
import pytest
from rich.console import Console

from bench import latency, llm, report, scale, server, throughput
from bench.server import URL_ENV, machine

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _renders(result: dict[str, Any], admin_url: str) -> str:
    """The readable table of ``result``, as ``python -m bench`` prints it."""
    result = {
        **result,
        "elapsed_s": 0.0,
        "machine": {**machine(admin_url), "load_average_after": [0.0, 0.0, 0.0]},
    }
    out = io.StringIO()
    report.show(result, Console(file=out, width=160))
    return out.getvalue()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# The other queues come with the ``bench`` extra; without it the run still
# covers artifactd's side.
RIVALS = tuple(name for name in ("procrastinate", "pgqueuer") if _installed(name))


def test_throughput__drains_every_job_for_each_queue(pg_admin_url: str) -> None:
    systems = ("artifactd", *RIVALS)

    result = throughput.run(
        pg_admin_url, jobs=30, concurrency=5, rounds=1, systems=systems
    )

    assert result["benchmark"] == "throughput"
    assert set(result["results"]) == set(systems)
    for name, r in result["results"].items():
        assert r["completed"] == 30, name
        assert r["jobs_per_s"] > 0 and r["drain_s"] > 0
        for cpu in (r["worker_cpu_ms_per_job"], r["db_cpu_ms_per_job"]):
            assert cpu is None or cpu >= 0
        assert len(r["jobs_per_s_each"]) == 1
    assert set(result["ratios"]) == set(RIVALS)
    assert "artifactd" in _renders(result, pg_admin_url)


def test_throughput__without_pgqueuer_says_the_goal_was_not_judged(
    pg_admin_url: str,
) -> None:
    result = throughput.run(
        pg_admin_url, jobs=20, concurrency=5, rounds=1, systems=("artifactd",)
    )

    assert result["goal"]["met"] is None
    assert "goal not judged: PgQueuer on psycopg was not run" in _renders(
        result, pg_admin_url
    )


def test_latency__measures_every_pickup_with_and_without_notify(
    pg_admin_url: str,
) -> None:
    result = latency.run(pg_admin_url, samples=4, poll_samples=2, poll_interval_s=0.2)

    assert result["benchmark"] == "latency"
    assert result["results"]["notify"]["samples"] == 4
    assert result["results"]["poll"]["samples"] == 2
    for r in result["results"].values():
        assert 0 <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert "LISTEN/NOTIFY" in _renders(result, pg_admin_url)


def test_llm__generates_every_artifact_within_the_fleet_cap(pg_admin_url: str) -> None:
    result = llm.run(
        pg_admin_url, jobs=8, latency_s=0.05, workers=2, concurrency=2, fleet_cap=3
    )

    r = result["results"]
    assert r["succeeded"] == 8 and r["failed"] == 0
    assert r["requests"] == 8
    assert 1 <= r["max_in_flight"] <= 3
    assert r["ideal_s"] == pytest.approx(8 * 0.05 / 3, abs=1e-3)
    assert r["ratio_to_ideal"] > 0
    # The phases account for the whole run beyond the fake's own time.
    lost = r["lost_ms"]
    assert set(lost) == {"ramp", "between", "drain", "last_write"}
    assert all(lost[phase] >= 0 for phase in ("ramp", "between", "drain"))
    own_s = r["requests"] * r["mean_request_s"] / 3
    assert sum(lost.values()) / 1000 == pytest.approx(r["total_s"] - own_s, abs=0.01)
    # Linux reports the host's share of the CPUs; elsewhere it is unknown.
    steal = r["cpu_steal_pct"]
    assert steal is None if not Path("/proc/stat").exists() else 0 <= steal <= 100
    table = _renders(result, pg_admin_url)
    assert "cap 3" in table
    assert "between jobs" in table
    assert "steal" in table
    assert "(ratio to ideal ≤ 1.1, max in flight ≤ 3)" in table


def test_scale__times_every_claim_in_both_phases(pg_admin_url: str) -> None:
    result = scale.run(pg_admin_url, finished=300, claims=4, batch=2, rounds=2)

    assert result["table_rows"] == 300 + 2 * 2 * 4 * 2
    for phase in ("empty", "finished"):
        for kind in ("claim", "capped_claim"):
            assert result["results"][phase][kind]["claims"] == 8
    assert set(result["ratios"]) == {"claim", "capped_claim"}
    assert "fleet-capped" in _renders(result, pg_admin_url)


def test_memory__json_from_the_command_line_adds_up(pg_admin_url: str) -> None:
    env = {**os.environ, URL_ENV: pg_admin_url}

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "memory",
            "--json",
            "--streams",
            "4",
            "--stream-s",
            "1.5",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )

    result = json.loads(done.stdout)  # one JSON object and nothing else
    r = result["results"]
    assert result["benchmark"] == "memory"
    assert r["succeeded"] == 4 and r["max_in_flight"] == 4 and r["samples"] >= 1
    assert 0 < r["idle_rss_mb"] and 0 < r["peak_rss_mb"]
    assert result["machine"]["cpus"] >= 1
    assert len(result["machine"]["load_average_after"]) == 3
    assert "peak MB" in _renders(result, pg_admin_url)


def test_llm_lost_time__splits_the_time_below_the_cap_by_phase() -> None:
    # Cap 2, insert at 0. Ramp: nothing in flight for 1 s, one for 1 s (1.5 s
    # lost); the cap is full from 2 s, when the last request arrives; drain:
    # one in flight from 3 s to 4 s (0.5 s lost).
    assert llm._lost_time([(1.0, 3.0), (2.0, 4.0)], 2, 0.0) == {
        "ramp": 1.5,
        "between": 0.0,
        "drain": 0.5,
    }
    # Full at once; between, one slot idle from 1 s to 1.5 s (0.25 s lost).
    spans = [(0.0, 1.0), (0.0, 1.0), (1.0, 2.0), (1.5, 2.0)]
    assert llm._lost_time(spans, 2, 0.0) == {
        "ramp": 0.0,
        "between": 0.25,
        "drain": 0.0,
    }
    # A cap never filled is ramp until the last arrival.
    assert llm._lost_time([(0.0, 1.0), (2.0, 3.0)], 2, 0.0) == {
        "ramp": 1.5,
        "between": 0.0,
        "drain": 0.5,
    }


def test_steal_pct__the_hosts_share_of_the_ticks_between_two_readings() -> None:
    # (steal, total) ticks: 30 of the 400 ticks between the readings were stolen.
    assert server.steal_pct((10, 1000), (40, 1400)) == 7.5
    assert server.steal_pct(None, (40, 1400)) is None
    # No tick passed (or the counters went back): no share to give.
    assert server.steal_pct((10, 1000), (10, 1000)) is None
    ticks = server.cpu_ticks()
    if Path("/proc/stat").exists():
        assert ticks is not None and 0 <= ticks[0] <= ticks[1]
    else:
        assert ticks is None


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("throughput", "--jobs", "-5"), "--jobs"),
        (("llm", "--fleet-cap", "0"), "--fleet-cap"),
        (("memory", "--stream-s", "0"), "--stream-s"),
        (("scale", "--finished", "-1"), "--finished"),
        (("llm", "--latency-s", "0"), "--latency-s"),
        (("llm", "--jobs", "1"), "--jobs"),
        (("llm", "--fleet-cap", "64"), "--fleet-cap"),
        (("memory", "--stream-s", "0.001"), "--stream-s"),
    ],
)
def test_cli__a_count_it_cannot_run_with_is_refused_by_name(
    args: tuple[str, ...], option: str
) -> None:
    done = _bench(*args)

    assert done.returncode == 2
    assert f"Invalid value for '{option}'" in done.stderr


def test_cli__an_unreachable_server_exits_1_naming_the_setting() -> None:
    done = _bench("llm", "--json", **{URL_ENV: "postgresql://postgres@127.0.0.1:1/x"})

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"bench llm: {URL_ENV}: cannot connect:")
    assert "Traceback" not in done.stderr


def test_cli__a_role_that_may_not_create_databases_exits_1_with_the_reason(
    pg_admin_url: str,
) -> None:
    role = "artifactd_bench_nocreatedb"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        info = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
        where = {k: str(info[k]) for k in ("host", "port") if info.get(k)}
        url = (
            f"postgresql://{role}@/{info.get('dbname', 'postgres')}?{urlencode(where)}"
        )

        done = _bench("scale", "--finished", "0", "--claims", "1", **{URL_ENV: url})

        assert done.returncode == 1
        assert "bench scale: PostgreSQL: InsufficientPrivilege:" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_cli__sigterm_to_the_bench_alone_stops_its_workers_and_drops_its_database(
    pg_admin_url: str,
) -> None:
    def bench_databases() -> set[str]:
        with psycopg.connect(pg_admin_url) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'bench_llm_%'"
            ).fetchall()
        return {row[0] for row in rows}

    before = bench_databases()
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "llm", "--jobs", "400", "--latency-s", "1"],
        cwd=ROOT,
        env={**os.environ, URL_ENV: pg_admin_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list[psutil.Process] = []
    try:
        parent = psutil.Process(bench.pid)

        def workers() -> list[psutil.Process]:
            return [
                p
                for p in parent.children(recursive=True)
                if "worker" in " ".join(p.cmdline())
            ]

        deadline = time.monotonic() + 60
        while len(workers()) < 4 or not bench_databases() - before:
            assert bench.poll() is None, bench.stderr.read() if bench.stderr else ""
            assert time.monotonic() < deadline, "the bench's workers never started"
            time.sleep(0.1)
        started = workers()

        bench.send_signal(signal.SIGTERM)

        assert bench.wait(timeout=60) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(started, timeout=10)
        assert alive == [] and len(gone) == 4
        assert bench_databases() == before
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for proc in started:  # what a failed run would leave behind
            if proc.is_running():
                proc.kill()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            for name in bench_databases() - before:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_cli__a_worker_that_dies_at_start_is_reported_with_its_reason(
    pg_admin_url: str,
) -> None:
    # The bench accepts any interval; the worker refuses one over an hour.
    done = _bench(
        "latency",
        "--samples",
        "2",
        "--poll-samples",
        "0",
        "--poll-interval-s",
        "4000",
        **{URL_ENV: pg_admin_url},
    )

    assert done.returncode == 1
    assert done.stderr.startswith(
        "bench latency: the worker exited before it was ready"
    )
    assert "ARTIFACTD_POLL_INTERVAL_S" in done.stderr
