"""``artifactd requeue``, ``cancel``, ``stats`` and ``prune``: running the queue.

The commands parse options, call ``shared.ops`` and render its reports: a
table or a sentence for people, or only JSON on standard output with
``--json``. Rows an action refuses are named on standard error with the
reason, and make the command exit 1.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from shared.ops import (
    BATCH_SIZE,
    FINAL_STATES,
    Refusal,
    RequeueFilter,
    cancel_artifacts,
    format_age,
    prune,
    queue_stats,
    requeue_by_ids,
    requeue_matching,
    to_json,
)
from worker.cli.common import (
    ExitCode,
    handle_errors,
    json_option,
    parse_duration_s,
    print_json,
    runtime_from,
    settings_options,
)
from worker.cli.inspect import (
    check_artifact_type,
    duration_option,
    error_code_option,
    make_console,
    render_ms,
)
from worker.daemon import notification_channels

# Rows a dry run shows in its table; --json lists up to shared.ops.PREVIEW_LIMIT.
SHOWN_ROWS = 50


# -- requeue ----------------------------------------------------------------


@click.command("requeue")
@click.argument("artifact_ids", nargs=-1, metavar="[ARTIFACT_ID]...")
@click.option(
    "--state",
    type=click.Choice(["failed"]),
    help="Every failed artifact (the only state that can be requeued).",
)
@error_code_option("Only artifacts that failed with this code.")
@click.option(
    "--type", "artifact_type", metavar="TYPE", help="Only this artifact type."
)
@duration_option(
    "--older-than", "Only artifacts that failed more than AGE ago (e.g. 2h)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Requeue at most this many, oldest failure first.",
)
@click.option(
    "--dry-run", is_flag=True, help="List what would be requeued; change nothing."
)
@settings_options()
@json_option
@handle_errors
def requeue_command(
    artifact_ids: tuple[str, ...],
    state: str | None,
    error_code: str | None,
    artifact_type: str | None,
    older_than: float | None,
    limit: int | None,
    dry_run: bool,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Put failed artifacts back to processing, attempts reset.

    Name artifacts by id, or select them with filters (--state failed alone
    selects every failed one). The previous failure stays in the artifact's
    metadata, and idle workers are woken at once. Ids that cannot be requeued
    (not failed, unknown, excluded by a filter) are named with the reason, and
    the command then exits 1.
    """
    where = RequeueFilter(error_code, artifact_type, older_than)
    if not artifact_ids and state is None and where == RequeueFilter():
        raise click.UsageError(
            "name artifact ids or select with filters: --state failed, --error-code, "
            "--type, --older-than (add --dry-run to look first)"
        )
    if artifact_ids and limit is not None:
        raise click.UsageError("--limit applies to filters, not to named ids")
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect(autocommit=True) as conn:
        check_artifact_type(conn, rt.settings, artifact_type)
        if artifact_ids:
            report = requeue_by_ids(conn, artifact_ids, where=where, dry_run=dry_run)
        else:
            report = requeue_matching(conn, where, limit=limit, dry_run=dry_run)

    if as_json:
        print_json(to_json(report))
    elif dry_run:
        _print_preview(report.preview, report.matched)
        if artifact_ids:
            what = f"{report.matched} of {len(artifact_ids)} named artifact(s)"
        else:
            what = f"{report.matched} artifact(s) ({where.describe()})"
        click.echo(f"dry run: {what} would be requeued; nothing changed")
    elif artifact_ids:
        click.echo(
            f"requeued {len(report.requeued)} of {len(artifact_ids)} named artifact(s)"
            + ("; workers notified" if report.requeued else "")
        )
    else:
        click.echo(
            f"requeued {len(report.requeued)} artifact(s) ({where.describe()})"
            + ("; workers notified" if report.requeued else "")
        )
    _exit_on_refusals(report.refused)


def _print_preview(rows: list[dict[str, Any]], matched: int) -> None:
    if not rows:
        return
    table = Table(title=f"{matched} artifact(s) would be requeued")
    for column in ("id", "type", "error", "failed at"):
        table.add_column(column)
    for row in rows[:SHOWN_ROWS]:
        failed_at = row.get("finished_at")
        table.add_row(
            row["id"],
            row["artifact_type"],
            row["error_code"] or "",
            failed_at.strftime("%Y-%m-%d %H:%M:%S") if failed_at else "",
        )
    make_console().print(table)
    if matched > SHOWN_ROWS:
        click.echo(f"... and {matched - SHOWN_ROWS} more")


def _exit_on_refusals(refused: list[Refusal]) -> None:
    for refusal in refused:
        state = f" ({refusal.state})" if refusal.state else ""
        click.echo(
            f"artifactd: refused {refusal.artifact_id}{state}: {refusal.reason}",
            err=True,
        )
    if refused:
        raise SystemExit(int(ExitCode.FAILURE))


# -- cancel -----------------------------------------------------------------


@click.command("cancel")
@click.argument("artifact_ids", nargs=-1, required=True, metavar="ARTIFACT_ID...")
@settings_options()
@json_option
@handle_errors
def cancel_command(artifact_ids: tuple[str, ...], as_json: bool, **kwargs: Any) -> None:
    """Fail artifacts still processing with CANCELLED.

    A worker running one stops at its next lease renewal (a third of
    ARTIFACTD_LEASE_S) and writes nothing. Artifacts already finished are
    named with their state, and the command then exits 1. Notification
    channels are taken from this command's settings, as a worker's would be.
    """
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect(autocommit=True) as conn:
        report = cancel_artifacts(
            conn,
            artifact_ids,
            locale=rt.settings.locale,
            channels=notification_channels(rt.settings),
        )

    if as_json:
        print_json(to_json(report))
    else:
        running = sum(c.was_running for c in report.cancelled)
        line = f"cancelled {len(report.cancelled)} artifact(s)"
        if running:
            line += f"; {running} were running and stop at their worker's next lease renewal"
        click.echo(line)
    _exit_on_refusals(report.refused)


# -- stats ------------------------------------------------------------------


@click.command("stats")
@duration_option("--since", "Window for outcomes and sent notifications.", default="1h")
@settings_options()
@json_option
@handle_errors
def stats_command(since: float, as_json: bool, **kwargs: Any) -> None:
    """Queue depth and in flight now; outcomes, durations and failures over a window."""
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect(autocommit=True) as conn:
        stats = queue_stats(conn, since_s=since)

    if as_json:
        print_json(to_json(stats))
        return
    _print_stats(make_console(), stats)


def _print_stats(console: Console, stats: dict[str, Any]) -> None:
    window = format_age(stats["since_s"])
    depth = stats["queue"]
    table = Table(title="queue now", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    oldest = depth["oldest_waiting_s"]
    rows = [
        ("waiting (queue depth)", str(depth["waiting"])),
        ("  ready to claim", str(depth["ready"])),
        ("  backing off before a retry", str(depth["retry_scheduled"])),
        ("  expired leases (worker gone)", str(depth["expired_leases"])),
        ("in flight", str(depth["in_flight"])),
        ("oldest waiting", format_age(oldest) if oldest is not None else "-"),
    ]
    if depth.get("llm_paused_for_s"):
        rows.append(("LLM claims paused for", format_age(depth["llm_paused_for_s"])))
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)

    outcomes = Table(title=f"finished in the last {window}")
    for column in ("type", "succeeded", "failed", "p50", "p95", "p50 wait"):
        outcomes.add_column(column, justify="left" if column == "type" else "right")
    for row in [
        *stats["outcomes"],
        {**stats["totals"], "artifact_type": "[bold]all[/bold]"},
    ]:
        outcomes.add_row(
            row["artifact_type"],
            str(row["succeeded"]),
            str(row["failed"]),
            render_ms(row.get("p50_ms")),
            render_ms(row.get("p95_ms")),
            render_ms(row.get("p50_wait_ms")),
        )
    console.print(outcomes)

    if stats["errors"]:
        errors = Table(title=f"failures by error code, last {window}")
        for column in ("error code", "type", "count", "last"):
            errors.add_column(column, justify="right" if column == "count" else "left")
        for row in stats["errors"]:
            errors.add_row(
                row["error_code"] or "?",
                row["artifact_type"],
                str(row["count"]),
                row["last_at"].strftime("%Y-%m-%d %H:%M:%S"),
            )
        console.print(errors)

    notifications = Table(title=f"notifications (sent: last {window})")
    for column in ("channel", "pending", "sent", "dead", "oldest pending"):
        notifications.add_column(
            column, justify="left" if column == "channel" else "right"
        )
    for row in stats["notifications"]:
        oldest_pending = row["oldest_pending_s"]
        notifications.add_row(
            row["channel"],
            str(row["pending"]),
            str(row["sent"]),
            f"[red]{row['dead']}[/red]" if row["dead"] else "0",
            format_age(oldest_pending) if oldest_pending is not None else "-",
        )
    if not stats["notifications"]:
        notifications.add_row("(none)", "0", "0", "0", "-")
    console.print(notifications)


# -- prune ------------------------------------------------------------------


def _age_with_unit(ctx: click.Context, param: click.Parameter, value: str) -> float:
    # A bare number would be seconds: `--older-than 30` meaning 30 days would
    # delete nearly everything, so prune wants the unit spelled out.
    if value.strip().replace(".", "", 1).isdigit():
        raise click.BadParameter(
            f"{value!r} needs a unit, e.g. {value.strip()}d for days"
        )
    return parse_duration_s(value)


@click.command("prune")
@click.option(
    "--older-than",
    required=True,
    callback=_age_with_unit,
    metavar="AGE",
    help="Delete what finished more than AGE ago: 12h, 30d, 8w (a unit is required).",
)
@click.option(
    "--state",
    "states",
    type=click.Choice(FINAL_STATES),
    multiple=True,
    help="Only artifacts in this final state (repeatable). Default: both.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=BATCH_SIZE,
    show_default=True,
    help="Rows deleted per transaction.",
)
@click.option(
    "--dry-run", is_flag=True, help="Count what would be deleted; delete nothing."
)
@settings_options()
@json_option
@handle_errors
def prune_command(
    older_than: float,
    states: tuple[str, ...],
    batch_size: int,
    dry_run: bool,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Delete finished artifacts and sent notifications past an age.

    Deletes go in batches, each its own short transaction, so workers and the
    API are never held up behind a large delete. An artifact whose
    notification is still pending is kept until it is delivered or dead; its
    notifications go with it. Rows written before the queue existed (no
    finish time) and tasks are never deleted.
    """
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect(autocommit=True) as conn:
        report = prune(
            conn,
            older_than_s=older_than,
            states=states or FINAL_STATES,
            dry_run=dry_run,
            batch_size=batch_size,
        )

    if as_json:
        print_json(to_json(report))
        return
    cutoff = report.cutoff.strftime("%Y-%m-%d %H:%M:%S %Z")
    if dry_run:
        click.echo(
            f"dry run: would delete {report.artifacts} artifact(s) and "
            f"{report.notifications} sent notification(s) from before {cutoff}; "
            "nothing changed"
        )
    else:
        click.echo(
            f"deleted {report.artifacts} artifact(s) and {report.notifications} sent "
            f"notification(s) from before {cutoff} in {report.batches} batch(es)"
        )


def register(group: click.Group) -> None:
    for command in (requeue_command, cancel_command, stats_command, prune_command):
        group.add_command(command)
