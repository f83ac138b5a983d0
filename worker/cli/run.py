"""``artifactd run``: the worker daemon."""

from __future__ import annotations

from typing import Any

import click

from worker.cli.common import handle_errors, runtime_from, settings_options
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
    "poll_interval_s",
    "shutdown_grace_s",
    "anthropic_api_key",
    "anthropic_base_url",
    "model",
    "wecom_webhook_url",
    "frontend_url",
    "metrics_port",
)


@click.command("run")
@click.option("--drain", is_flag=True, help="Exit 0 once no artifact is left in processing anywhere.")
@settings_options(*WORKER_SETTINGS)
@handle_errors
def run_command(drain: bool, **kwargs: Any) -> None:
    """Claim and generate artifacts until stopped (SIGTERM drains gracefully)."""
    rt = runtime_from(kwargs)
    rt.ensure_schema()
    run_worker_sync(rt.settings, rt.url, drain=drain)


def register(group: click.Group) -> None:
    group.add_command(run_command)
