"""``artifactd demo``: the whole path on real meetings, on the embedded database.

Enqueues the bundled meetings (AMI via QMSum, and VCSum; see
``worker/meetings/CREDITS.md``), runs a worker in this process until every
one of them is final, and prints what came out.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from shared.transcript import read_transcripts
from worker.cli.common import ExitCode, handle_errors, runtime_from, settings_options
from worker.daemon import run_worker
from worker.enqueue import enqueue_transcripts
from worker.runner import Worker

BATCH_STATES = """
SELECT a.id::text AS id, t.name, t.language, a.state, a.content, a.attempts,
       round(extract(epoch FROM a.finished_at - a.started_at) * 1000) AS duration_ms
FROM generated_artifacts a JOIN tasks t ON t.id = a.task_id
WHERE a.batch_id = %(batch_id)s
ORDER BY a.created_at
"""

MEETING_FILES = (
    "ami-ES2005a.json",
    "ami-IS1004a.json",
    "ami-TS3010a.json",
    "vcsum-samples.jsonl",
)


def bundled_meetings() -> list[Path]:
    folder = resources.files("worker") / "meetings"
    return [Path(str(folder / name)) for name in MEETING_FILES]


@click.command("demo")
@click.option(
    "--type",
    "artifact_type",
    default="meeting_minutes",
    show_default=True,
    help="Artifact type to generate.",
)
@settings_options(
    "generator", "concurrency", "anthropic_api_key", "anthropic_base_url", "model"
)
@handle_errors
def demo_command(artifact_type: str, **kwargs: Any) -> None:
    """Generate minutes for the bundled real meetings and show the results."""
    kwargs["log_level"] = kwargs.get("log_level") or "warning"
    rt = runtime_from(kwargs)
    console = Console()
    with console.status("starting the database and bringing the schema up to date"):
        rt.ensure_schema()
    transcripts = [t for path in bundled_meetings() for t in read_transcripts(path)]
    batch_id = str(uuid.uuid4())
    with rt.connect() as conn:
        enqueued = enqueue_transcripts(
            conn, transcripts, artifact_type, batch_id=batch_id
        )
    where = (
        "embedded PostgreSQL in " + str(rt.settings.data_dir)
        if rt.embedded
        else "ARTIFACTD_DATABASE_URL"
    )
    console.print(
        f"Enqueued {len(enqueued)} real meetings ({artifact_type}) on the {where}; "
        f"generator: [bold]{rt.settings.resolved_generator}[/bold]"
    )

    rows = asyncio.run(
        _run_until_done(rt.settings, rt.url, batch_id, len(enqueued), console)
    )

    table = Table(title="artifactd demo: results")
    table.add_column("artifact", no_wrap=True, min_width=8)
    table.add_column("meeting", no_wrap=True, min_width=16)
    table.add_column("lang", no_wrap=True, min_width=4)
    table.add_column("state", no_wrap=True, min_width=7)
    table.add_column("ms", no_wrap=True, justify="right", min_width=4)
    table.add_column("first key point", overflow="ellipsis", no_wrap=True, max_width=22)
    for row in rows:
        table.add_row(
            row["id"][:8],
            row["name"][:24],
            row["language"] or "",
            _state(row["state"]),
            f"{row['duration_ms']:.0f}" if row["duration_ms"] is not None else "",
            _preview(row["content"] or {}),
        )
    console.print(table)
    ok = sum(1 for row in rows if row["state"] == "success")
    console.print(
        f"{ok} of {len(rows)} succeeded. Read one in full with:  artifactd show {rows[0]['id']}"
    )
    console.print(
        "[dim]Meetings: AMI Meeting Corpus (CC BY 4.0) via QMSum (MIT); "
        "VCSum (MIT), for demonstration.[/dim]"
    )
    if ok != len(rows):
        raise SystemExit(int(ExitCode.FAILURE))


async def _run_until_done(
    settings: Any, url: str, batch_id: str, total: int, console: Console
) -> list[dict[str, Any]]:
    progress = Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task("demo", total=total)
    rows: list[dict[str, Any]] = []

    async def watch(worker: Worker) -> None:
        nonlocal rows
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while True:
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(BATCH_STATES, {"batch_id": batch_id})
                    rows = await cur.fetchall()
                done = sum(1 for row in rows if row["state"] != "processing")
                progress.update(bar, completed=done)
                if done >= total:
                    worker.stop()
                    return
                await asyncio.sleep(0.1)

    with progress:
        started = time.monotonic()
        await run_worker(settings, url, extra_loops=[watch])
        progress.update(bar, description=f"done in {time.monotonic() - started:.1f}s")
    return rows


def _state(state: str) -> str:
    colour = {"success": "green", "failed": "red"}.get(state, "yellow")
    return f"[{colour}]{state}[/{colour}]"


def _preview(content: dict[str, Any]) -> str:
    """The first key point (the section after participants), or the first lines."""
    if "error_code" in content:
        return f"{content['error_code']}: {content.get('error_message', '')}"
    sections = re.split(r"^#{2,3} .*$", content.get("text", ""), flags=re.MULTILINE)
    body = sections[2] if len(sections) > 2 else content.get("text", "")
    lines = [re.sub(r"[*#]+", "", ln).strip("- ").strip() for ln in body.splitlines()]
    lines = [re.sub(r"\s+", " ", ln) for ln in lines if ln]
    return (lines[0] if lines else "")[:140]


def register(group: click.Group) -> None:
    group.add_command(demo_command)
