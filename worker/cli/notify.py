"""``artifactd notify`` and ``artifactd notifications``: the outbox by hand.

``notify`` runs the notifier alone, for hosts that only deliver (workers
deliver too unless ``ARTIFACTD_WORKER_NOTIFIER=false``). ``notifications
list`` shows outbox rows and their states; ``notifications retry`` puts dead
rows back to pending with a fresh attempt budget, and wakes the notifiers.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click
import structlog
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.table import Table

from shared.database import listen_url
from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.states import NotificationState
from worker.channels import configured_channel_names
from worker.cli.common import (
    ExitCode,
    fail,
    handle_errors,
    json_option,
    print_json,
    runtime_from,
    settings_options,
)
from worker.cli.inspect import parse_artifact_id
from worker.identity import new_worker_id
from worker.notifier import build_notifier, retry_dead

log = structlog.get_logger(__name__)

NOTIFY_SETTINGS = (
    "listen_url",
    "wecom_webhook_url",
    "feishu_webhook_url",
    "feishu_secret",
    "webhook_url",
    "webhook_secret",
    "frontend_url",
    "notify_rate_per_minute",
    "notify_max_attempts",
    "notify_backoff_s",
    "notify_timeout_s",
    "notify_poll_interval_s",
    "timezone",
)

STATES = tuple(state.value for state in NotificationState)
CHANNELS = ("wecom", "feishu", "webhook")

LIST_NOTIFICATIONS = """
SELECT n.id, n.artifact_id::text AS artifact_id, a.artifact_type, t.name AS task_name,
       n.event, n.channel, n.state, n.attempts, n.next_attempt_at, n.last_error,
       n.created_at, n.sent_at
FROM notifications n
JOIN generated_artifacts a ON a.id = n.artifact_id
LEFT JOIN tasks t ON t.id = a.task_id
WHERE (%(state)s::text IS NULL OR n.state = %(state)s)
  AND (%(channel)s::text IS NULL OR n.channel = %(channel)s)
  AND (%(artifact_id)s::uuid IS NULL OR n.artifact_id = %(artifact_id)s::uuid)
ORDER BY n.id DESC
LIMIT %(limit)s
"""


# -- notify ---------------------------------------------------------------------


@click.command("notify")
@settings_options(*NOTIFY_SETTINGS)
@handle_errors
def notify_command(**kwargs: Any) -> None:
    """Deliver notifications until stopped (SIGTERM finishes sends in flight)."""
    rt = runtime_from(kwargs)
    if not configured_channel_names(rt.settings):
        raise ConfigurationError(
            "no notification channel is configured: set ARTIFACTD_WECOM_WEBHOOK_URL, "
            "ARTIFACTD_FEISHU_WEBHOOK_URL or ARTIFACTD_WEBHOOK_URL"
        )
    rt.ensure_schema()
    asyncio.run(run_notifier(rt.settings, rt.url))


async def run_notifier(settings: Settings, url: str) -> None:
    """One notifier with its own small pool and listening connection."""
    async with AsyncConnectionPool(
        url,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True},
        open=False,
        name="artifactd-notifier",
    ) as pool:
        await pool.wait(timeout=30)
        notifier = build_notifier(
            settings,
            pool,
            notifier_id=new_worker_id(),
            listen_url=listen_url(settings, url),
        )
        if notifier is None:
            raise ConfigurationError("no notification channel is configured")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, notifier.stop)
        await notifier.run()


# -- notifications list / retry ---------------------------------------------------


@click.group("notifications")
def notifications_group() -> None:
    """Outbox rows: list them, retry dead ones."""


@notifications_group.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only rows in this state.")
@click.option("--channel", type=click.Choice(CHANNELS), help="Only this channel.")
@click.option("--artifact", "artifact_id", help="Only this artifact's rows.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@settings_options()
@json_option
@handle_errors
def list_command(
    state: str | None,
    channel: str | None,
    artifact_id: str | None,
    limit: int,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """List notifications, newest first."""
    params = {
        "state": state,
        "channel": channel,
        "artifact_id": parse_artifact_id(artifact_id) if artifact_id else None,
        "limit": limit,
    }
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(LIST_NOTIFICATIONS, params)
        rows = cur.fetchall()

    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} notification(s), newest first")
    for column in (
        "id",
        "artifact",
        "event",
        "channel",
        "state",
        "attempts",
        "next / sent",
        "last error",
    ):
        table.add_column(column)
    for row in rows:
        when = row["sent_at"] if row["state"] == "sent" else row["next_attempt_at"]
        table.add_row(
            str(row["id"]),
            row["artifact_id"],
            row["event"],
            row["channel"],
            _state(row["state"]),
            str(row["attempts"]),
            when.strftime("%Y-%m-%d %H:%M:%S") if row["state"] != "dead" else "",
            (row["last_error"] or "")[:60],
        )
    Console().print(table)


def _state(state: str) -> str:
    colour = {"sent": "green", "dead": "red", "pending": "yellow"}.get(state, "white")
    return f"[{colour}]{state}[/{colour}]"


@notifications_group.command("retry")
@click.option(
    "--id", "ids", type=int, multiple=True, help="This notification (repeatable)."
)
@click.option("--artifact", "artifact_id", help="Only this artifact's dead rows.")
@click.option(
    "--channel", type=click.Choice(CHANNELS), help="Only this channel's dead rows."
)
@click.option(
    "--dry-run", is_flag=True, help="List what would be retried; change nothing."
)
@settings_options()
@json_option
@handle_errors
def retry_command(
    ids: tuple[int, ...],
    artifact_id: str | None,
    channel: str | None,
    dry_run: bool,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Put dead notifications back to pending; with no filter, every dead one."""
    artifact = parse_artifact_id(artifact_id) if artifact_id else None
    rt = runtime_from(kwargs)
    rt.ensure_schema()

    with rt.connect(autocommit=True) as conn:
        rows = retry_dead(
            conn, ids=list(ids), artifact_id=artifact, channel=channel, dry_run=dry_run
        )

    missing = sorted(set(ids) - {row["id"] for row in rows})
    if as_json:
        print_json({"dry_run": dry_run, "retried": rows, "not_dead": missing})
    else:
        verb = "would retry" if dry_run else "retried"
        click.echo(f"{verb} {len(rows)} dead notification(s)")
        for row in rows:
            click.echo(
                f"  {row['id']}  {row['channel']}  {row['artifact_id']}  "
                f"{row['last_error'] or ''}"
            )
    if not dry_run and rows:
        log.info(
            "notification.retried", count=len(rows), ids=[row["id"] for row in rows]
        )
    if missing:
        fail(
            "not dead (or no such id): " + ", ".join(map(str, missing)),
            ExitCode.FAILURE,
        )


def register(group: click.Group) -> None:
    group.add_command(notify_command)
    group.add_command(notifications_group)
