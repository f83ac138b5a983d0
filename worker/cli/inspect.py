"""``artifactd list`` and ``artifactd show``: reading the queue."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
from psycopg.rows import dict_row
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from shared.errors import ErrorCode
from shared.repository import get_artifact
from worker.cli.common import (
    ExitCode,
    fail,
    handle_errors,
    json_option,
    print_json,
    runtime_from,
    settings_options,
)

STATES = ("processing", "success", "failed")

LIST_ARTIFACTS = """
SELECT a.id::text AS id, a.task_id, t.name AS task_name, a.artifact_type, a.version,
       a.state, a.attempts, a.max_attempts, a.content->>'error_code' AS error_code,
       a.created_at, a.finished_at,
       round(extract(epoch FROM a.finished_at - a.started_at) * 1000) AS duration_ms
FROM generated_artifacts a
LEFT JOIN tasks t ON t.id = a.task_id
WHERE (%(state)s::text IS NULL OR a.state = %(state)s)
  AND (%(error_code)s::text IS NULL
       OR (a.state = 'failed' AND a.content->>'error_code' = %(error_code)s))
  AND (%(artifact_type)s::text IS NULL OR a.artifact_type = %(artifact_type)s)
ORDER BY a.created_at DESC
LIMIT %(limit)s
"""


def parse_artifact_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an artifact id (a UUID)") from None


@click.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only rows in this state.")
@click.option(
    "--error-code",
    type=click.Choice([c.value for c in ErrorCode], case_sensitive=False),
    help="Only failed rows with this error code.",
)
@click.option("--type", "artifact_type", help="Only this artifact type.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@settings_options()
@json_option
@handle_errors
def list_command(
    state: str | None, error_code: str | None, artifact_type: str | None, limit: int, as_json: bool, **kwargs: Any
) -> None:
    """List artifacts, newest first."""
    rt = runtime_from(kwargs)
    rt.ensure_schema()
    params = {
        "state": state,
        "error_code": error_code.upper() if error_code else None,
        "artifact_type": artifact_type,
        "limit": limit,
    }
    with rt.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(LIST_ARTIFACTS, params)
        rows = cur.fetchall()
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} artifact(s), newest first")
    for column in ("id", "task", "type", "state", "attempts", "error", "duration", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"],
            (row["task_name"] or row["task_id"])[:40],
            row["artifact_type"],
            _state(row["state"]),
            f"{row['attempts']}/{row['max_attempts']}",
            row["error_code"] or "",
            f"{row['duration_ms']:.0f} ms" if row["duration_ms"] is not None else "",
            row["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console().print(table)


def _state(state: str) -> str:
    colour = {"success": "green", "failed": "red", "processing": "yellow"}.get(state, "white")
    return f"[{colour}]{state}[/{colour}]"


@click.command("show")
@click.argument("artifact_id")
@settings_options()
@json_option
@handle_errors
def show_command(artifact_id: str, as_json: bool, **kwargs: Any) -> None:
    """Show one artifact, content included."""
    artifact_id = parse_artifact_id(artifact_id)
    rt = runtime_from(kwargs)
    rt.ensure_schema()
    with rt.connect() as conn:
        row = get_artifact(conn, artifact_id)
    if row is None:
        fail(f"no artifact with id {artifact_id}", ExitCode.FAILURE)
        return
    if as_json:
        print_json(row)
        return
    console = Console()
    console.print(f"[bold]{row['artifact_type']}[/bold] v{row['version']} for task {row['task_id']}")
    console.print(f"state: {_state(row['state'])}   attempts: {row['attempts']}/{row['max_attempts']}")
    console.print(f"created {row['created_at']}   finished {row['finished_at'] or '-'}")
    content = row["content"] or {}
    if row["state"] == "failed":
        console.print(f"[red]{content.get('error_code')}[/red]: {content.get('error_message')}")
        console.print(f"hint: {content.get('hint')}")
    elif content.get("format") == "markdown":
        console.print(Markdown(content.get("text", "")))
    elif content:
        console.print_json(json.dumps(content.get("data", content), ensure_ascii=False))
    errors = (row["metadata"] or {}).get("errors") or []
    if errors:
        console.print(f"[dim]{len(errors)} failed attempt(s): "
                      + ", ".join(str(e.get("error_code")) for e in errors) + "[/dim]")


def register(group: click.Group) -> None:
    group.add_command(list_command)
    group.add_command(show_command)
