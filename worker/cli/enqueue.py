"""``artifactd enqueue``: a task per transcript file and an artifact for each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shared.artifact_types import load_artifact_types
from worker.cli.common import (
    ExitCode,
    handle_errors,
    json_option,
    print_json,
    runtime_from,
    settings_options,
)
from worker.enqueue import enqueue_files


@click.command("enqueue")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--type",
    "artifact_type",
    required=True,
    help="Artifact type, e.g. meeting_minutes.",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 100_000),
    default=1,
    show_default=True,
    help="Artifacts per transcript.",
)
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help="Higher is claimed first.",
)
@settings_options("max_attempts")
@json_option
@handle_errors
def enqueue_command(
    files: tuple[Path, ...],
    artifact_type: str,
    repeat: int,
    priority: int,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Enqueue transcripts: plain text, QMSum JSON, VCSum JSONL, WebVTT or SRT.

    An unreadable file is reported with its reason and nothing is enqueued
    for it; the others are enqueued. Exit 1 if any file was unreadable.
    """
    rt = runtime_from(kwargs)
    types = load_artifact_types(rt.settings.types_dir)
    if artifact_type not in types:
        raise click.BadParameter(
            f"unknown artifact type {artifact_type!r}; known: {', '.join(sorted(types))}",
            param_hint="--type",
        )
    rt.ensure_schema()
    with rt.connect() as conn:
        enqueued, errors = enqueue_files(
            conn,
            list(files),
            artifact_type,
            repeat=repeat,
            priority=priority,
            max_attempts=rt.settings.max_attempts,
        )
    for error in errors:
        click.echo(
            f"artifactd: error: {error.path}: {error.reason} (nothing enqueued for it)",
            err=True,
        )
    if as_json:
        print_json(
            [{"task_id": e.task_id, "artifact_id": e.artifact_id} for e in enqueued]
        )
    else:
        tasks = len({e.task_id for e in enqueued})
        click.echo(
            f"enqueued {len(enqueued)} artifact(s) of type {artifact_type} for {tasks} task(s)"
        )
    if errors:
        raise SystemExit(int(ExitCode.FAILURE))


def register(group: click.Group) -> None:
    group.add_command(enqueue_command)
