"""The API's database connections: one small pool, one transaction per request.

Routes are plain functions that Starlette runs in its thread pool, and the
repository works on sync psycopg connections, so this is psycopg_pool's sync
pool. A request that cannot get a connection in time, or whose connection
fails, becomes a 503 in ``api_stub.errors``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

# A handful of connections serves many requests: each holds one only for its
# few short statements, never while waiting on anything else.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
# A request waits this long for a free connection before answering 503.
CONNECTION_WAIT_S = 10.0
# /healthz answers within this, whatever the database does.
HEALTH_WAIT_S = 2.0
CONNECT_TIMEOUT_S = 5
# How the pool's connections show in pg_stat_activity.
APPLICATION_NAME = "artifactd-api"


class Database:
    """The pool; ``transaction()`` commits on success and rolls back on error."""

    def __init__(self, url: str) -> None:
        self._pool = ConnectionPool(
            url,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "application_name": APPLICATION_NAME,
            },
            # A connection broken while idle (server restart, failover) is
            # replaced on checkout instead of failing the request that gets it.
            check=ConnectionPool.check_connection,
            open=False,
            name="artifactd-api",
        )

    def open(self) -> None:
        """Start connecting in the background; a database down now is no error yet."""
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def transaction(
        self, wait_s: float = CONNECTION_WAIT_S
    ) -> Iterator[psycopg.Connection]:
        with self._pool.connection(timeout=wait_s) as conn:
            yield conn

    def ping(self) -> None:
        """Raise unless the database answers within ``HEALTH_WAIT_S``."""
        with self.transaction(wait_s=HEALTH_WAIT_S) as conn:
            conn.execute("SELECT 1")
