"""``artifactd api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

from typing import Any

import click

from worker.cli.common import handle_errors, runtime_from, settings_options

API_SETTINGS = (
    "listen_url",
    "api_token",
    "api_max_body_bytes",
    "api_max_batch_items",
    "api_keepalive_s",
    "max_attempts",
)


@click.command("api")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on; 0 picks a free one (logged in api.started).",
)
@settings_options(*API_SETTINGS)
@handle_errors
def api_command(host: str, port: int, **kwargs: Any) -> None:
    """Serve the HTTP API until SIGTERM or SIGINT, then stop gracefully."""
    # Imported here so other commands do not pay for loading the web stack.
    from api_stub.app import create_app
    from api_stub.server import serve

    rt = runtime_from(kwargs)
    rt.ensure_schema()
    app = create_app(rt.settings, url=rt.url)
    serve(app, host=host, port=port)


def register(group: click.Group) -> None:
    group.add_command(api_command)
