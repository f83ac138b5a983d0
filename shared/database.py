"""Connections: which database, and how to reach it.

``database_url`` resolves the settings to a libpq URL (starting the embedded
server when none is configured); ``engine`` gives SQLAlchemy a pool over the same URL.
Unreachable servers become ``DatabaseError`` here, so callers see one type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from shared.embedded import embedded_database_url
from shared.errors import DatabaseError
from shared.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa


def database_url(settings: Settings) -> str:
    """The libpq URL of the queue database."""
    if settings.database_url is not None:
        return _libpq(settings.database_url.get_secret_value())
    return embedded_database_url(settings.data_dir)


def listen_url(settings: Settings, url: str) -> str:
    """Where the LISTEN connection goes: direct to the server behind a pooler."""
    if settings.listen_url is not None:
        return _libpq(settings.listen_url.get_secret_value())
    return url


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# One engine per URL for the process's life (a handful of URLs at most).
_engines: dict[str, sa.Engine] = {}


def engine(url: str) -> sa.Engine:
    """A small pooled SQLAlchemy engine for one URL (CLI, API, migrations)."""
    found = _engines.get(url)
    if found is not None:
        return found
    import sqlalchemy as sa  # only migrations need it; it is slow to import

    # The creator lets libpq parse the URL, so key=value strings and socket
    # hosts (the embedded server's) work exactly as they do for psycopg.
    found = _engines[url] = sa.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(url, connect_timeout=10),
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
    )
    return found


def dispose_engine(url: str) -> None:
    """Close the pooled connections of ``url``'s engine, if one was made."""
    found = _engines.pop(url, None)
    if found is not None:
        found.dispose()


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A plain psycopg connection; an unreachable server is a DatabaseError."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot reach PostgreSQL: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
