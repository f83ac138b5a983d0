"""Alembic environment: runs the schema history against the queue database.

The URL comes from the ``sqlalchemy.url`` option set by ``artifactd migrate``
(or the test suite); run by hand, it falls back to the settings.
"""

from __future__ import annotations

from alembic import context

from shared.database import database_url, engine
from shared.settings import load_settings

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    return database_url(load_settings())


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with engine(_url()).connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=_url().replace("postgresql://", "postgresql+psycopg://", 1),
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
