"""The schema history, run from code: ``artifactd migrate`` and start-up checks.

The Alembic scripts ship inside the ``migrations`` package, so an installed
artifactd migrates without the repository's ``alembic.ini``.
"""

from __future__ import annotations

from importlib import resources

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from shared.database import engine
from shared.errors import DatabaseError, SchemaOutOfDateError

# Serialises migrations run by several processes at once (demo, tests, units).
_MIGRATION_LOCK = 7_245_019_311


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    try:
        with engine(url).connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot reach PostgreSQL: {' '.join(str(exc.orig).split())}") from exc


def migrate(url: str, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade to ``revision``; returns (before, after)."""
    try:
        with engine(url).begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            before = MigrationContext.configure(conn).get_current_revision()
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            after = MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot reach PostgreSQL: {' '.join(str(exc.orig).split())}") from exc
    return before, after or ""


def require_current(url: str) -> None:
    """Raise SchemaOutOfDateError unless the database is at this code's head."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"database schema is at {current or 'nothing'}, this code needs {head}: "
            "run `artifactd migrate`"
        )
