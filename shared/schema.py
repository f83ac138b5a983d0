"""The schema history, run from code: ``artifactd migrate`` and start-up checks.

The Alembic scripts ship inside the ``migrations`` package, so an installed
artifactd migrates without the repository's ``alembic.ini``. Checking the
revision (which every command does at start) reads the scripts' revision
ids and the ``alembic_version`` row directly: importing Alembic and
SQLAlchemy costs more than a second per process, and only ``migrate`` needs
them.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import psycopg

from shared.errors import DatabaseError, SchemaOutOfDateError

if TYPE_CHECKING:
    from alembic.config import Config

# Serialises migrations run by several processes at once (demo, tests, units).
_MIGRATION_LOCK = 7_245_019_311


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The revision no other revision builds on, read from the scripts."""
    revisions: dict[str, str | None] = {}
    for script in (resources.files("migrations") / "versions").iterdir():
        if not script.name.endswith(".py") or script.name.startswith("__"):
            continue
        assigned = {}
        for node in ast.parse(script.read_text("utf-8")).body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                name = node.targets[0].id
                if name in ("revision", "down_revision"):
                    assigned[name] = ast.literal_eval(node.value)
        if "revision" in assigned:
            revisions[assigned["revision"]] = assigned.get("down_revision")
    heads = set(revisions) - set(revisions.values())
    if len(heads) != 1:
        raise SchemaOutOfDateError(
            f"the schema history has {len(heads)} heads: {sorted(heads)}"
        )
    return heads.pop()


def current_revision(url: str) -> str | None:
    """The database's revision, or None when it has no schema yet."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT to_regclass('alembic_version') IS NOT NULL"
            ).fetchone()
            if not exists or not exists[0]:
                return None
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot reach PostgreSQL: {' '.join(str(exc).split())}"
        ) from exc
    return row[0] if row else None


def migrate(url: str, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade to ``revision``; returns (before, after)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    from shared.database import engine

    try:
        with engine(url).begin() as conn:
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK}
            )
            before = MigrationContext.configure(conn).get_current_revision()
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            after = MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            f"cannot reach PostgreSQL: {' '.join(str(exc.orig).split())}"
        ) from exc
    return before, after or ""


def require_current(url: str) -> None:
    """Raise SchemaOutOfDateError unless the database is at this code's head."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"database schema is at {current or 'nothing'}, this code needs {head}: "
            "run `artifactd migrate`"
        )
