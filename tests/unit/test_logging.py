"""The JSON log lines operators and the fault tests parse.

Each test configures logging for real, writes through structlog to the
``sys.stderr`` of the moment (pytest's, here) and parses what came out; the
previous configuration is put back afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from shared.logging import bind_context, configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """structlog's configuration and the root level as they were; and the root
    handler ``configure_logging`` installs removed (pytest adds its own to
    each phase)."""
    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    yield
    structlog.configure(**saved)
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
    root.setLevel(level)


def _json_logger() -> Any:
    """A logger under the JSON configuration a worker off a terminal runs."""
    configure_logging("json", "info")
    return structlog.get_logger("test").bind()


def _events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    lines = capsys.readouterr().err.splitlines()
    assert all(line.isascii() for line in lines)
    return [json.loads(line) for line in lines]


def test_log_line__event_level_and_utc_timestamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = _json_logger()

    log.info("artifact.succeeded", duration_ms=3, usage={"input_chars": 61})
    log.debug("artifact.claimed")  # below the level

    [event] = _events(capsys)
    assert event["event"] == "artifact.succeeded"
    assert event["level"] == "info"
    assert (event["duration_ms"], event["usage"]) == (3, {"input_chars": 61})
    assert event["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(event["timestamp"])
    assert stamp.utcoffset() == timedelta(0)


def test_log_line__any_text_stays_ascii_and_round_trips(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = "会议纪要 — café 🚀 \ud83d"
    log = _json_logger()

    log.warning("artifact.retry_scheduled", error=text, big=2**70, key={1: "one"})

    [event] = _events(capsys)
    assert event["error"] == text
    assert event["big"] == 2**70
    assert event["key"] == {"1": "one"}


def test_log_line__values_json_lacks_are_written_as_their_repr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = _json_logger()
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    log.info("x", when=when, kinds={"a"})

    [event] = _events(capsys)
    assert event["when"] == repr(when)
    assert event["kinds"] == repr({"a"})


def test_log_line__exceptions_are_rendered(capsys: pytest.CaptureFixture[str]) -> None:
    log = _json_logger()
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("heartbeat.crashed")

    [event] = _events(capsys)
    assert event["level"] == "error"
    assert "ValueError: boom" in event["exception"]


def test_bind_context__fields_go_with_their_task_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = _json_logger()

    async def job(artifact_id: str) -> None:
        bind_context(artifact_id=artifact_id, attempt=1)
        await asyncio.sleep(0)
        log.info("artifact.succeeded")
        logging.getLogger("psycopg").warning("from the standard library")
        log.info("artifact.succeeded", attempt=2)  # the event's own value wins

    async def both() -> None:
        await asyncio.gather(job("a"), job("b"))
        log.info("worker.drained")

    asyncio.run(both())

    events = _events(capsys)
    by_id = sorted(
        (e.get("artifact_id", "-"), e.get("attempt", 0), e["event"]) for e in events
    )
    assert by_id[1:] == [
        ("a", 1, "artifact.succeeded"),
        ("a", 1, "from the standard library"),
        ("a", 2, "artifact.succeeded"),
        ("b", 1, "artifact.succeeded"),
        ("b", 1, "from the standard library"),
        ("b", 2, "artifact.succeeded"),
    ]
    assert by_id[0] == ("-", 0, "worker.drained")
