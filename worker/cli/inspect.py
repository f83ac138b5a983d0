"""``artifactd list`` and ``artifactd show``: reading the queue.

Also the option parsing the operator commands share (durations, artifact
types, error codes); the queries themselves are in ``shared.ops``.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import click
import psycopg
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from shared.artifact_types import load_artifact_types
from shared.errors import ErrorCode
from shared.ops import (
    artifact_notifications,
    artifact_type_exists,
    format_age,
    list_artifacts,
    to_json,
)
from shared.repository import get_artifact
from shared.settings import Settings
from worker.cli.common import (
    ExitCode,
    fail,
    handle_errors,
    json_option,
    parse_duration_s,
    print_json,
    runtime_from,
    settings_options,
)

STATES = ("processing", "success", "failed")
ERROR_CODES = [code.value for code in ErrorCode]
STATE_COLOURS = {"success": "green", "failed": "red", "processing": "yellow"}
NOTIFICATION_COLOURS = {"sent": "green", "dead": "red", "pending": "yellow"}


# -- option parsing shared with the operator commands ---------------------------


def duration_option(
    name: str, help_text: str, *, required: bool = False, default: str | None = None
) -> Callable[[Any], Any]:
    """An option taking ``90s``, ``15m``, ``2h``, ``30d`` or ``1w``, as seconds."""

    def convert(
        ctx: click.Context, param: click.Parameter, value: str | None
    ) -> float | None:
        return None if value is None else parse_duration_s(value)

    return click.option(
        name,
        callback=convert,
        required=required,
        default=default,
        show_default=default is not None,
        metavar="AGE",
        help=help_text,
    )


def error_code_option(help_text: str) -> Callable[[Any], Any]:
    return click.option(
        "--error-code",
        type=click.Choice(ERROR_CODES, case_sensitive=False),
        callback=lambda ctx, param, value: value.upper() if value else None,
        metavar="CODE",
        help=help_text + " One of: " + ", ".join(ERROR_CODES) + ".",
    )


def check_artifact_type(
    conn: psycopg.Connection, settings: Settings, artifact_type: str | None
) -> None:
    """Refuse a ``--type`` that is neither configured nor found in the table.

    A type that is no longer configured may still have rows (failed with
    UNKNOWN_ARTIFACT_TYPE), so those stay valid filters.
    """
    if artifact_type is None:
        return
    known = load_artifact_types(settings.types_dir)
    if artifact_type in known or artifact_type_exists(conn, artifact_type):
        return
    raise click.BadParameter(
        f"unknown artifact type {artifact_type!r}; known: {', '.join(sorted(known))}",
        param_hint="'--type'",
    )


def parse_artifact_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an artifact id (a UUID, as `artifactd list` prints)"
        ) from None


def make_console() -> Console:
    """A console for tables; piped output gets wide lines, not folded ids."""
    return Console(width=None if sys.stdout.isatty() else 200)


def render_state(state: str) -> str:
    colour = STATE_COLOURS.get(state, "white")
    return f"[{colour}]{state}[/{colour}]"


def render_notifications(notifications: list[dict[str, Any]]) -> str:
    parts = []
    for n in notifications:
        colour = NOTIFICATION_COLOURS.get(n["state"], "white")
        parts.append(f"{n['channel']}:[{colour}]{n['state']}[/{colour}]")
    return " ".join(parts)


def render_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10_000:
        return f"{value:.0f} ms"
    return format_age(value / 1000)


# -- list -------------------------------------------------------------------


@click.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only rows in this state.")
@error_code_option("Only failed rows with this error code.")
@click.option(
    "--type", "artifact_type", metavar="TYPE", help="Only this artifact type."
)
@click.option(
    "--task", "task_id", metavar="TASK_ID", help="Only this task's artifacts."
)
@duration_option("--older-than", "Only artifacts created more than AGE ago (e.g. 2h).")
@duration_option("--since", "Only artifacts created within AGE (e.g. 30m).")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="Rows to show at most.",
)
@settings_options()
@json_option
@handle_errors
def list_command(
    state: str | None,
    error_code: str | None,
    artifact_type: str | None,
    task_id: str | None,
    older_than: float | None,
    since: float | None,
    limit: int,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """List artifacts, newest first, with their notifications' states."""
    if error_code and state not in (None, "failed"):
        raise click.UsageError(
            f"--error-code matches failed artifacts only, not --state {state}"
        )
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect() as conn:
        check_artifact_type(conn, rt.settings, artifact_type)
        rows = list_artifacts(
            conn,
            state=state,
            error_code=error_code,
            artifact_type=artifact_type,
            task_id=task_id,
            older_than_s=older_than,
            since_s=since,
            limit=limit,
        )

    if as_json:
        print_json(to_json(rows))
        return
    table = Table(title=f"{len(rows)} artifact(s), newest first")
    columns = (
        "id",
        "task",
        "type",
        "state",
        "attempts",
        "error",
        "duration",
        "notified",
        "created",
    )
    for column in columns:
        table.add_column(column, no_wrap=column in ("id", "created"))
    for row in rows:
        table.add_row(
            row["id"],
            (row["task_name"] or row["task_id"])[:40],
            row["artifact_type"],
            render_state(row["state"]),
            f"{row['attempts']}/{row['max_attempts']}",
            row["error_code"] or "",
            render_ms(row["duration_ms"]) if row["duration_ms"] is not None else "",
            render_notifications(row["notifications"]),
            row["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
        )
    console = make_console()
    console.print(table)
    if not rows:
        console.print("[dim]nothing matched; loosen the filters or raise --limit[/dim]")


# -- show -------------------------------------------------------------------


@click.command("show")
@click.argument("artifact_id")
@settings_options()
@json_option
@handle_errors
def show_command(artifact_id: str, as_json: bool, **kwargs: Any) -> None:
    """Show one artifact: state, content, attempts, errors and notifications."""
    artifact_id = parse_artifact_id(artifact_id)
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect() as conn:
        row = get_artifact(conn, artifact_id)
        notifications = artifact_notifications(conn, artifact_id) if row else []

    if row is None:
        fail(
            f"no artifact with id {artifact_id}; `artifactd list` shows recent ones",
            ExitCode.FAILURE,
        )
        return
    if as_json:
        print_json(to_json({**row, "notifications": notifications}))
        return
    _print_artifact(make_console(), row, notifications)


def _print_artifact(
    console: Console, row: dict[str, Any], notifications: list[dict[str, Any]]
) -> None:
    metadata = row["metadata"] or {}
    console.print(
        f"[bold]{row['artifact_type']}[/bold] v{row['version']} "
        f"for task {row['task_id']}   id {row['id']}"
    )
    console.print(
        f"state: {render_state(row['state'])}   "
        f"attempts: {row['attempts']}/{row['max_attempts']}   priority: {row['priority']}"
    )
    console.print(
        f"created {row['created_at']:%Y-%m-%d %H:%M:%S}   "
        f"started {_when(row['started_at'])}   finished {_when(row['finished_at'])}"
    )
    if row["state"] == "processing":
        if row["lease_owner"]:
            console.print(
                f"held by {row['lease_owner']} until {_when(row['lease_expires_at'])}"
            )
        else:
            console.print(f"waiting; claimable from {_when(row['run_after'])}")
        if metadata.get("progress"):
            console.print(
                f"progress: {json.dumps(metadata['progress'], ensure_ascii=False)}"
            )
    if metadata.get("model") or metadata.get("usage"):
        console.print(
            f"[dim]model {metadata.get('model', '-')}   "
            f"usage {json.dumps(metadata.get('usage'), ensure_ascii=False)}[/dim]"
        )

    content = row["content"] or {}
    if row["state"] == "failed":
        console.print(
            f"[red]{content.get('error_code')}[/red]: {content.get('error_message')}"
        )
        console.print(f"hint: {content.get('hint')}")
    elif content.get("format") == "markdown":
        console.print(Markdown(content.get("text", "")))
    elif content:
        console.print_json(json.dumps(content.get("data", content), ensure_ascii=False))

    errors = metadata.get("errors") or []
    if errors:
        codes = ", ".join(str(e.get("error_code")) for e in errors)
        console.print(f"[dim]{len(errors)} failed attempt(s): {codes}[/dim]")
    previous = metadata.get("previous_failures") or []
    if previous:
        codes = ", ".join(str(p.get("error_code")) for p in previous)
        console.print(f"[dim]requeued {len(previous)} time(s) after: {codes}[/dim]")
    if notifications:
        table = Table(title="notifications")
        for column in ("channel", "event", "state", "attempts", "sent", "last error"):
            table.add_column(column)
        for n in notifications:
            table.add_row(
                n["channel"],
                n["event"],
                render_notifications([n]).split(":", 1)[1],
                str(n["attempts"]),
                _when(n["sent_at"]),
                (n["last_error"] or "")[:80],
            )
        console.print(table)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def register(group: click.Group) -> None:
    group.add_command(list_command)
    group.add_command(show_command)
