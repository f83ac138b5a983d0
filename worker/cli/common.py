"""What every command shares: settings options, exit codes, output, errors.

Settings options read their ``ARTIFACTD_*`` variable (named in ``--help``)
and are validated together by ``shared.settings``; a bad value exits 2 with
the variable named. ``--json`` commands print only JSON on standard output;
logs always go to standard error.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from shared.database import connect, database_url
from shared.errors import (
    ArtifactdError,
    ConfigurationError,
    DatabaseError,
    InputError,
    SchemaOutOfDateError,
)
from shared.logging import configure_logging
from shared.schema import migrate, require_current
from shared.settings import ENV_NAMES, Settings, load_settings


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    DATABASE_UNREACHABLE = 3


F = TypeVar("F", bound=Callable[..., Any])

_HELP = {
    "database_url": "PostgreSQL URL; unset: the embedded server under the data directory.",
    "listen_url": "Direct URL for LISTEN when the database URL goes through PgBouncer.",
    "data_dir": "Where the embedded PostgreSQL keeps its data.",
    "generator": "auto, anthropic, offline or echo.",
    "anthropic_api_key": "Anthropic API key (never logged).",
    "anthropic_base_url": "Anthropic API base URL.",
    "model": "Model for every artifact type (overrides the type's own).",
    "concurrency": "Jobs this process runs at once.",
    "fleet_concurrency": "Rows leased at once across every worker.",
    "lease_s": "Seconds a claim lasts without renewal.",
    "max_attempts": "Attempts per artifact.",
    "request_timeout_s": "Seconds one LLM request may take.",
    "stall_timeout_s": "Seconds a streamed answer may go silent.",
    "attempt_timeout_s": "Seconds one whole attempt may take.",
    "context_tokens": "Tokens the model takes per request; longer transcripts are split.",
    "poll_interval_s": "Seconds between claims when no NOTIFY arrives.",
    "shutdown_grace_s": "Seconds running jobs get after SIGTERM.",
    "wecom_webhook_url": "WeCom group robot webhook URL.",
    "frontend_url": "Base URL for links in notifications.",
    "feishu_webhook_url": "Feishu/Lark custom bot webhook URL.",
    "feishu_secret": "Signing secret of the Feishu/Lark bot (never logged).",
    "webhook_url": "Generic JSON webhook URL for every final state.",
    "webhook_secret": "HMAC-SHA256 key that signs generic webhook bodies (never logged).",
    "notify_rate_per_minute": "Messages a minute to one chat robot, across every notifier.",
    "notify_max_attempts": "Deliveries tried per notification before it is dead.",
    "notify_backoff_s": "Seconds before the first delivery retry (doubles each time).",
    "notify_timeout_s": "Seconds one delivery request may take.",
    "notify_poll_interval_s": "Seconds between outbox looks when no NOTIFY arrives.",
    "worker_notifier": "Whether the worker delivers notifications too (true/false).",
    "timezone": "IANA time zone for times in notifications.",
    "api_token": "Bearer token the HTTP API requires.",
    "api_max_body_bytes": "Largest request body the HTTP API reads, in bytes.",
    "api_max_batch_items": "Most items one batch request may carry.",
    "api_keepalive_s": "Seconds between keep-alive comments on an event stream.",
    "locale": "zh-CN or en, for error messages and notifications.",
    "types_dir": "Directory of extra artifact type TOML files.",
    "log_format": "auto, json or console.",
    "log_level": "debug, info, warning or error.",
    "metrics_port": "Port for the Prometheus endpoint.",
}

# Options every command takes: where the database is and how to log.
BASE_SETTINGS = (
    "database_url",
    "data_dir",
    "locale",
    "types_dir",
    "log_format",
    "log_level",
)


def settings_options(*names: str) -> Callable[[F], F]:
    """Add one option per named setting, each reading its environment variable."""

    def decorate(func: F) -> F:
        for name in reversed(BASE_SETTINGS + names):
            if name in getattr(func, "__artifactd_settings__", ()):
                continue
            func = click.option(
                "--" + name.replace("_", "-"),
                name,
                envvar=ENV_NAMES[name],
                show_envvar=True,
                default=None,
                help=_HELP.get(name, ""),
            )(func)
            func.__artifactd_settings__ = (  # type: ignore[attr-defined]
                *getattr(func, "__artifactd_settings__", ()),
                name,
            )
        return func

    return decorate


@dataclass
class Runtime:
    """Settings plus the resolved database, built once per command."""

    settings: Settings
    _url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = database_url(self.settings)
        return self._url

    @property
    def embedded(self) -> bool:
        return self.settings.database_url is None

    def ensure_schema(self) -> None:
        """Embedded databases are ours: migrate them. Others must be migrated."""
        if self.embedded:
            migrate(self.url)
        else:
            require_current(self.url)

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.url, autocommit=autocommit)


def runtime_from(kwargs: dict[str, Any]) -> Runtime:
    """Pop the settings options out of a command's kwargs and build a Runtime."""
    given = {name: kwargs.pop(name) for name in list(kwargs) if name in ENV_NAMES}
    settings = load_settings(**given)
    configure_logging(settings.log_format, settings.log_level)
    return Runtime(settings)


def handle_errors(func: F) -> F:
    """Turn artifactd errors into a one-line message and a named exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigurationError, SchemaOutOfDateError) as exc:
            fail(str(exc), ExitCode.USAGE)
        except DatabaseError as exc:
            fail(str(exc), ExitCode.DATABASE_UNREACHABLE)
        except psycopg.OperationalError as exc:
            fail(
                f"cannot reach PostgreSQL: {' '.join(str(exc).split())}",
                ExitCode.DATABASE_UNREACHABLE,
            )
        except InputError as exc:
            fail(str(exc), ExitCode.FAILURE)
        except ArtifactdError as exc:
            fail(str(exc), ExitCode.FAILURE)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: ExitCode) -> None:
    click.echo(f"artifactd: error: {message}", err=True)
    sys.exit(int(code))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=_default))


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print only JSON on standard output."
    )(func)


def parse_duration_s(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``30d`` or plain seconds, to seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    raw = text.strip().lower()
    try:
        if raw and raw[-1] in units:
            value = float(raw[:-1]) * units[raw[-1]]
        else:
            value = float(raw)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a duration like 90s, 15m, 2h or 30d"
        ) from None
    if value < 0:
        raise click.BadParameter(f"{text!r} is negative")
    return value
