"""``artifactd migrate``: bring the schema to the newest revision."""

from __future__ import annotations

from typing import Any

import click

from shared.schema import migrate
from worker.cli.common import (
    handle_errors,
    json_option,
    print_json,
    runtime_from,
    settings_options,
)


@click.command("migrate")
@settings_options()
@json_option
@handle_errors
def migrate_command(as_json: bool, **kwargs: Any) -> None:
    """Bring the database schema to the newest revision."""
    rt = runtime_from(kwargs)
    before, after = migrate(rt.url)
    if as_json:
        print_json({"from": before, "to": after})
    elif before == after:
        click.echo(f"schema already at {after}")
    else:
        click.echo(f"schema migrated from {before or 'nothing'} to {after}")


def register(group: click.Group) -> None:
    group.add_command(migrate_command)
