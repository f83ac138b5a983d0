"""``artifactd run``: the worker daemon."""

from __future__ import annotations

from typing import Any

import click

from shared.database import connect, dispose_engine
from worker import systemd
from worker.cli.common import Runtime, handle_errors, runtime_from, settings_options
from worker.daemon import run_worker_sync

WORKER_SETTINGS = (
    "listen_url",
    "concurrency",
    "generator",
    "fleet_concurrency",
    "lease_s",
    "request_timeout_s",
    "stall_timeout_s",
    "attempt_timeout_s",
    "context_tokens",
    "poll_interval_s",
    "shutdown_grace_s",
    "anthropic_api_key",
    "anthropic_base_url",
    "model",
    "wecom_webhook_url",
    "frontend_url",
    "feishu_webhook_url",
    "feishu_secret",
    "webhook_url",
    "webhook_secret",
    "notify_rate_per_minute",
    "notify_max_attempts",
    "notify_backoff_s",
    "notify_timeout_s",
    "notify_poll_interval_s",
    "worker_notifier",
    "timezone",
    "metrics_port",
)


@click.command("run")
@click.option(
    "--drain",
    is_flag=True,
    help="Exit 0 once no artifact is left in processing anywhere.",
)
@settings_options(*WORKER_SETTINGS)
@handle_errors
def run_command(drain: bool, **kwargs: Any) -> None:
    """Claim and generate artifacts until stopped (SIGTERM drains gracefully).

    Under systemd (NOTIFY_SOCKET set) an unreachable database is waited for
    and READY follows once it answers; elsewhere it exits 3 at once.
    """
    rt = runtime_from(kwargs)
    systemd.wait_for_database(lambda: _check_database(rt), systemd.notifier())
    run_worker_sync(rt.settings, rt.url, drain=drain)


def _check_database(rt: Runtime) -> None:
    """The server answers within libpq's connect timeout and the schema is current."""
    connect(rt.url).close()
    rt.ensure_schema()
    # A migration's pooled connection (embedded database) would otherwise stay
    # open, idle, for the worker's whole life. The check of a server's schema
    # uses plain psycopg, so a worker never imports SQLAlchemy.
    dispose_engine(rt.url)


def register(group: click.Group) -> None:
    group.add_command(run_command)
