"""``artifactd doctor``: checks what a deployment needs, one line each.

Settings, artifact types, the database, the schema revision against this
code's, the LLM key and API, and each configured webhook. Every line is ok
or says what to do; any failure makes the command exit 1. Network checks
have short deadlines, so an unreachable host is reported, never waited on.
Webhooks are only reached, never sent a message, and no URL that carries a
key is printed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import httpx
import psycopg
import structlog
from rich.console import Console
from rich.markup import escape

from shared.artifact_types import load_artifact_types
from shared.database import connect, database_url
from shared.errors import ArtifactdError, ConfigurationError
from shared.logging import configure_logging
from shared.schema import alembic_config, current_revision, head_revision
from shared.settings import ENV_NAMES, Settings, load_settings
from worker.cli.common import (
    ExitCode,
    handle_errors,
    json_option,
    print_json,
    settings_options,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Seconds each network check may take, DNS included.
NETWORK_DEADLINE_S = 8.0
HTTP_TIMEOUT_S = 5.0
# Settings whose value is a webhook URL, by channel name.
WEBHOOK_SETTINGS = {
    "wecom": "wecom_webhook_url",
    "feishu": "feishu_webhook_url",
    "webhook": "webhook_url",
}
STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, fail or skip
    detail: str
    action: str = ""


class _Deadline(Exception):  # noqa: N818 - an outcome, not an error
    """A network check did not finish in time."""


def _within(seconds: float, func: Callable[[], T]) -> T:
    """Run ``func`` in a daemon thread; give up after ``seconds``.

    Client timeouts do not cover name resolution, which can hang on a host
    with no network; an abandoned daemon thread does not hold up exit.
    """
    result: list[Any] = []

    def target() -> None:
        try:
            result.append((True, func()))
        except BaseException as exc:  # handed to the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=target, name="doctor-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if not result:
        raise _Deadline(f"no answer within {seconds:g}s")
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


# -- the checks ---------------------------------------------------------------


def check_artifact_types(settings: Settings) -> Check:
    try:
        types = load_artifact_types(settings.types_dir)
    except ConfigurationError as exc:
        return Check(
            "artifact types", "fail", str(exc), "fix the type file named above"
        )
    return Check("artifact types", "ok", f"{len(types)}: {', '.join(sorted(types))}")


def check_database(settings: Settings) -> tuple[Check, str | None]:
    where = (
        "embedded PostgreSQL"
        if settings.database_url is None
        else "ARTIFACTD_DATABASE_URL"
    )
    try:
        url = database_url(settings)
        with connect(url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except (ArtifactdError, psycopg.Error) as exc:
        return (
            Check(
                "database",
                "fail",
                " ".join(str(exc).split()),
                f"check {where}, that PostgreSQL runs and accepts this user",
            ),
            None,
        )
    version = row[0] if row else "?"
    return Check("database", "ok", f"PostgreSQL {version} at {_describe_db(url)}"), url


def check_schema(url: str, embedded: bool) -> Check:
    head = head_revision()
    try:
        current = current_revision(url)
    except ArtifactdError as exc:
        return Check("schema", "fail", str(exc), "fix the database line above first")
    if current == head:
        return Check("schema", "ok", f"at {head}, as this code expects")
    if current is not None and not _known_revision(current):
        return Check(
            "schema",
            "fail",
            f"database is at {current}, which this code does not know",
            "a newer artifactd migrated it: upgrade artifactd on this host",
        )
    status = "warn" if embedded else "fail"
    action = "run `artifactd migrate`"
    if embedded:
        action += " (commands on the embedded database also do it themselves)"
    return Check(
        "schema",
        status,
        f"database is at {current or 'nothing'}, code needs {head}",
        action,
    )


def _known_revision(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    try:
        return (
            ScriptDirectory.from_config(alembic_config()).get_revision(revision)
            is not None
        )
    except Exception:  # alembic raises several types for an unknown id
        return False


def check_llm(settings: Settings) -> Check:
    generator = settings.resolved_generator
    if generator != "anthropic":
        why = (
            "no ANTHROPIC_API_KEY, so `auto` picks offline"
            if settings.generator == "auto"
            else f"ARTIFACTD_GENERATOR={settings.generator}"
        )
        return Check(
            "llm",
            "skip",
            f"generator {generator} ({why}); no LLM is called",
            "set ANTHROPIC_API_KEY to write with Claude"
            if settings.generator == "auto"
            else "",
        )
    if settings.anthropic_api_key is None:
        return Check(
            "llm",
            "fail",
            "ARTIFACTD_GENERATOR=anthropic but ANTHROPIC_API_KEY is not set",
            "set ANTHROPIC_API_KEY",
        )
    # Imported here: the SDK takes seconds to import, and no other command
    # run through this console script needs it.
    import anthropic
    import httpx2

    target = settings.anthropic_base_url or "the Anthropic API"
    key = settings.anthropic_api_key.get_secret_value()

    def probe() -> None:
        client = anthropic.Anthropic(
            api_key=key,
            base_url=settings.anthropic_base_url,
            max_retries=0,
            timeout=httpx2.Timeout(HTTP_TIMEOUT_S, connect=HTTP_TIMEOUT_S),
        )
        try:
            client.models.list(limit=1)
        finally:
            client.close()

    try:
        _within(NETWORK_DEADLINE_S, probe)
    except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as exc:
        return Check(
            "llm",
            "fail",
            f"{target} rejected the key (HTTP {exc.status_code})",
            "check ANTHROPIC_API_KEY; then `artifactd requeue --error-code LLM_AUTH_FAILED`",
        )
    except anthropic.APIStatusError as exc:
        return Check(
            "llm",
            "warn",
            f"{target} answered HTTP {exc.status_code} to a models list",
            "reachable, but check ANTHROPIC_BASE_URL if this is a proxy",
        )
    except (anthropic.APIConnectionError, _Deadline) as exc:
        return Check(
            "llm",
            "fail",
            f"cannot reach {target}: {_cause(exc)}",
            "check the network, proxy and ANTHROPIC_BASE_URL",
        )
    return Check("llm", "ok", f"{target} reachable; key accepted")


def check_webhooks(settings: Settings) -> list[Check]:
    checks = []
    for channel, name in WEBHOOK_SETTINGS.items():
        secret = getattr(settings, name, None)
        if secret is None:
            continue
        checks.append(
            _check_webhook(
                channel, ENV_NAMES.get(name, name), secret.get_secret_value()
            )
        )
    if not checks:
        return [
            Check(
                "webhook",
                "skip",
                "none configured; notifications are off",
                "set ARTIFACTD_WECOM_WEBHOOK_URL to get them",
            )
        ]
    return checks


def _check_webhook(channel: str, env_name: str, url: str) -> Check:
    # Only scheme and host are shown: the path or query carries the robot key.
    shown = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    name = f"webhook {channel}"

    def probe() -> int:
        with httpx.Client(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
            return client.get(url).status_code

    try:
        status = _within(NETWORK_DEADLINE_S, probe)
    except (httpx.HTTPError, _Deadline) as exc:
        return Check(
            name,
            "fail",
            f"cannot reach {shown}: {_cause(exc)}",
            f"check the network and {env_name}",
        )
    if status >= 500:
        return Check(
            name,
            "warn",
            f"{shown} answered HTTP {status}",
            "reachable but failing; deliveries are retried",
        )
    return Check(name, "ok", f"{shown} reachable (HTTP {status}; no message sent)")


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc
    return " ".join(str(inner).split()) or type(inner).__name__


def _describe_db(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host") or "local socket"
    port = info.get("port") or "5432"
    return f"{host}:{port}/{info.get('dbname') or info.get('user') or ''}"


def run_checks(given: dict[str, Any]) -> list[Check]:
    """Every check, in order; later ones are skipped when what they need failed."""
    try:
        settings = load_settings(**given)
    except ConfigurationError as exc:
        return [Check("settings", "fail", str(exc), "fix the variables named above")]
    configure_logging(settings.log_format, settings.log_level)
    checks = [
        Check("settings", "ok", f"valid; generator {settings.resolved_generator}")
    ]
    checks.append(check_artifact_types(settings))

    database, url = check_database(settings)
    checks.append(database)
    if url is None:
        checks.append(Check("schema", "skip", "no database to look at"))
    else:
        checks.append(check_schema(url, embedded=settings.database_url is None))
    checks.append(check_llm(settings))
    checks.extend(check_webhooks(settings))
    return checks


@click.command("doctor")
@settings_options(*ENV_NAMES)
@json_option
@handle_errors
def doctor_command(as_json: bool, **kwargs: Any) -> None:
    """Check settings, database, schema, LLM and webhooks; exit 1 if any fails.

    Each line is ok, or says what is wrong and what to do. No message is
    sent to any webhook and no document is generated.
    """
    given = {name: kwargs.pop(name) for name in list(kwargs) if name in ENV_NAMES}
    checks = run_checks(given)
    failed = [c for c in checks if c.status == "fail"]
    log.debug("doctor.finished", failed=[c.name for c in failed])

    if as_json:
        print_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        console = Console(highlight=False, soft_wrap=True)
        width = max(len(c.name) for c in checks)
        for c in checks:
            style = STATUS_STYLE[c.status]
            line = f"[{style}]{c.status:>4}[/{style}]  {c.name:<{width}}  {escape(c.detail)}"
            console.print(line)
            if c.action:
                console.print(
                    f"{'':>4}  {'':<{width}}  [bold]-> {escape(c.action)}[/bold]"
                )
        summary = f"{len(failed)} check(s) failed" if failed else "all checks passed"
        console.print(summary)
    if failed:
        raise SystemExit(int(ExitCode.FAILURE))


def register(group: click.Group) -> None:
    group.add_command(doctor_command)
