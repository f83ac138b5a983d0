"""The notifier against real PostgreSQL and the fake robot server on loopback.

In-process notifiers run their real loop (``Notifier.run``) on their own
connection pools; "two notifiers" are two pools and two loops, or two
``artifactd notify`` processes. Every wait is a bounded poll on the database
or the robot's record, never a sleep, and nothing asserts how long anything
took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shared.errors import ErrorCode, error_content
from shared.settings import load_settings
from tests.fakes.robot_server import FakeRobotServer, delayed, errcode, http_status
from tests.support.processes import ROOT, base_env, query, scalar, wait_until
from worker.cli import main
from worker.notifier import RECORD_DEAD, Notifier, build_notifier

FRONTEND = "https://notes.example.com/app/"
MEETING = datetime(2026, 12, 3, 6, 30, tzinfo=UTC)


@pytest.fixture
def robots() -> Any:
    with FakeRobotServer() as server:
        yield server


def robot_key() -> str:
    # A robot per test: rate slots are keyed by the robot's URL.
    return f"key-{uuid.uuid4().hex[:12]}"


def finished_artifacts(
    url: str,
    count: int = 1,
    *,
    state: str = "success",
    error_code: ErrorCode | None = None,
    task_name: str = "产品周会",
    note_type: str | None = None,
    channels: tuple[str, ...] = ("wecom",),
) -> list[str]:
    """A task and ``count`` finished artifacts with their outbox rows."""
    content = (
        error_content(error_code, "zh-CN")
        if error_code
        else {"format": "markdown", "text": "# ok"}
    )
    with psycopg.connect(url, autocommit=True) as conn:
        task_id = conn.execute(
            "INSERT INTO tasks (name, transcript, meeting_time, note_type) "
            "VALUES (%s, 'Alice: hi.', %s, %s) RETURNING id",
            (task_name, MEETING, note_type),
        ).fetchone()[0]
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO generated_artifacts (task_id, artifact_type, state, content, "
                "finished_at) SELECT %s, 'meeting_minutes', %s, %s, now() "
                "FROM generate_series(1, %s) RETURNING id::text",
                (task_id, state, Jsonb(content), count),
            ).fetchall()
        ]
        conn.execute(
            "INSERT INTO notifications (artifact_id, event, channel) "
            "SELECT a, %s, c FROM unnest(%s::uuid[]) a, unnest(%s::text[]) c",
            (state, ids, list(channels)),
        )
    return ids


def outbox(url: str, artifact_id: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        cur.execute(
            "SELECT id, state, attempts, last_error, locked_by, next_attempt_at > now() AS later "
            "FROM notifications WHERE artifact_id = %s",
            (artifact_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def artifact_row(url: str, artifact_id: str) -> tuple[Any, ...]:
    return query(
        url,
        "SELECT state, content, metadata, updated_at, finished_at, attempts "
        "FROM generated_artifacts WHERE id = %s",
        (artifact_id,),
    )[0]


async def eventually(
    condition: Callable[[], Any], *, timeout_s: float = 20.0, message: str = ""
) -> Any:
    """``wait_until`` off the event loop, so the notifiers keep running."""
    return await asyncio.to_thread(
        wait_until, condition, timeout_s=timeout_s, interval_s=0.05, message=message
    )


@asynccontextmanager
async def idle_notifier(db_url: str, **overrides: Any) -> AsyncIterator[Notifier]:
    """A notifier on a pool of its own, not running its loop."""
    values: dict[str, Any] = {
        "database_url": db_url,
        "frontend_url": FRONTEND,
        "notify_backoff_s": 0.05,
        "notify_poll_interval_s": 0.2,
        "notify_rate_per_minute": 1000,
        "timezone": "Asia/Shanghai",
    }
    values.update(overrides)
    settings = load_settings(**values)
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=3, kwargs={"autocommit": True}, open=False
    ) as pool:
        notifier = build_notifier(
            settings,
            pool,
            notifier_id=f"test-{uuid.uuid4().hex[:6]}",
            listen_url=db_url,
        )
        assert notifier is not None
        try:
            yield notifier
        finally:
            await notifier.aclose()


@asynccontextmanager
async def running_notifier(db_url: str, **overrides: Any) -> AsyncIterator[Notifier]:
    """A notifier running its real loop; stopped on exit."""
    async with idle_notifier(db_url, **overrides) as notifier:
        task = asyncio.create_task(notifier.run())
        try:
            yield notifier
        finally:
            notifier.stop()
            await asyncio.wait_for(task, timeout=15)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it is still there after a bounded wait."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise


# -- one message per final state, through a real worker ---------------------------


def test_worker__one_message_per_final_state_with_title_fields_link_and_code(
    clean_db: str, robots: FakeRobotServer, tmp_path: Path
) -> None:
    key = robot_key()
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, transcript, meeting_time, note_type) "
            "VALUES ('t-weekly', '产品周会', 'Alice: we ship Friday.', %s, 'meeting_minutes')",
            (MEETING,),
        )
        ok_ids = [
            r[0]
            for r in conn.execute(
                "INSERT INTO generated_artifacts (task_id, artifact_type, state) "
                "VALUES ('t-weekly', 'meeting_minutes', 'processing'), "
                "('t-weekly', 'meeting_minutes', 'processing') RETURNING id::text"
            ).fetchall()
        ]
        [bad_id] = conn.execute(
            "INSERT INTO generated_artifacts (task_id, artifact_type, state) "
            "VALUES ('t-weekly', 'no_such_type', 'processing') RETURNING id::text"
        ).fetchone()
    env = base_env(
        clean_db,
        ARTIFACTD_WECOM_WEBHOOK_URL=robots.wecom_url(key),
        ARTIFACTD_FRONTEND_URL=FRONTEND,
        ARTIFACTD_TIMEZONE="Asia/Shanghai",
        ARTIFACTD_NOTIFY_POLL_INTERVAL_S="0.5",
    )
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--concurrency", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            wait_until(
                lambda: (
                    scalar(
                        clean_db,
                        "SELECT count(*) FROM notifications WHERE state = 'sent'",
                    )
                    == 3
                ),
                timeout_s=40,
                message="three notifications sent",
            )
        finally:
            exit_code = stop_process(proc)

    messages = robots.accepted(key)
    assert len(messages) == 3, log_path.read_text()
    assert exit_code == 0
    by_artifact = {
        artifact_id: [m for m in messages if f"/artifacts/{artifact_id})" in m.content]
        for artifact_id in [*ok_ids, bad_id]
    }
    assert {k: len(v) for k, v in by_artifact.items()} == {k: 1 for k in by_artifact}
    for artifact_id in ok_ids:
        lines = by_artifact[artifact_id][0].content.splitlines()
        assert lines[0] == '## <font color="info">✓ 会议纪要生成成功</font>'
        assert "> **任务名称**：产品周会" in lines
        assert "> **会议时间**：2026-12-03 14:30 UTC+08:00" in lines
        assert "> **笔记类型**：会议纪要" in lines
        assert (
            f"[查看会议纪要](https://notes.example.com/app/artifacts/{artifact_id})"
            in lines
        )
    failed = by_artifact[bad_id][0].content.splitlines()
    assert failed[0] == '## <font color="warning">✗ no_such_type生成失败</font>'
    assert "⚠ 生成过程中遇到问题：未配置该文档类型。" in failed
    assert '<font color="comment">错误码：UNKNOWN_ARTIFACT_TYPE</font>' in failed
    rows = query(
        clean_db,
        "SELECT a.state, n.event, n.channel, n.attempts FROM notifications n "
        "JOIN generated_artifacts a ON a.id = n.artifact_id ORDER BY n.event",
    )
    assert rows == [
        ("failed", "failed", "wecom", 1),
        *[("success", "success", "wecom", 1)] * 2,
    ]


# -- retries, dead rows, and the artifact left alone ------------------------------------


def test_notifier__45009_is_retried_then_delivered_and_the_artifact_is_untouched(
    clean_db: str, robots: FakeRobotServer
) -> None:
    key = robot_key()
    [artifact_id] = finished_artifacts(clean_db)
    before = artifact_row(clean_db, artifact_id)
    robots.script(errcode(45009, "api freq out of limit"), robot=key)

    async def scenario() -> None:
        async with running_notifier(clean_db, wecom_webhook_url=robots.wecom_url(key)):
            await eventually(lambda: outbox(clean_db, artifact_id)["state"] == "sent")

    run(scenario())

    row = outbox(clean_db, artifact_id)
    assert row["attempts"] == 2
    assert "errcode 45009" in row["last_error"]
    assert row["locked_by"] is None
    answers = [m.answer["errcode"] for m in robots.messages if m.robot == key]
    assert answers == [45009, 0]
    assert artifact_row(clean_db, artifact_id) == before


def test_notifier__93000_marks_dead_once_without_retrying(
    clean_db: str, robots: FakeRobotServer
) -> None:
    key = robot_key()
    robots.remove_robot(key)
    [artifact_id] = finished_artifacts(
        clean_db, state="failed", error_code=ErrorCode.LLM_TIMEOUT
    )
    before = artifact_row(clean_db, artifact_id)

    async def scenario() -> int:
        async with running_notifier(
            clean_db, wecom_webhook_url=robots.wecom_url(key)
        ) as n:
            await eventually(lambda: outbox(clean_db, artifact_id)["state"] == "dead")
            n.wake()
            return await n.deliver_due()

    claimed_after_dead = run(scenario())

    row = outbox(clean_db, artifact_id)
    assert row["attempts"] == 1
    assert row["last_error"].startswith("robot gone: errcode 93000")
    assert claimed_after_dead == 0
    assert [m.answer["errcode"] for m in robots.messages if m.robot == key] == [93000]
    assert artifact_row(clean_db, artifact_id) == before


def test_notifier__http_errors_retry_until_the_attempt_cap_then_dead(
    clean_db: str, robots: FakeRobotServer
) -> None:
    key = robot_key()
    robots.script(http_status(502), http_status(502), http_status(502), robot=key)
    [artifact_id] = finished_artifacts(clean_db)
    before = artifact_row(clean_db, artifact_id)

    async def scenario() -> None:
        async with running_notifier(
            clean_db, wecom_webhook_url=robots.wecom_url(key), notify_max_attempts=3
        ):
            await eventually(lambda: outbox(clean_db, artifact_id)["state"] == "dead")

    run(scenario())

    row = outbox(clean_db, artifact_id)
    assert (row["attempts"], row["last_error"]) == (3, "HTTP 502")
    assert len([m for m in robots.messages if m.robot == key]) == 3
    assert artifact_row(clean_db, artifact_id) == before


def test_notifier__long_chinese_task_name_is_delivered_within_4096_bytes(
    clean_db: str, robots: FakeRobotServer
) -> None:
    key = robot_key()
    name = "关于下一财年全球市场拓展与跨部门资源协调的专题讨论会" * 300
    [artifact_id] = finished_artifacts(clean_db, task_name=name)

    async def scenario() -> None:
        async with running_notifier(clean_db, wecom_webhook_url=robots.wecom_url(key)):
            await eventually(
                lambda: outbox(clean_db, artifact_id)["state"] != "pending"
            )

    run(scenario())

    assert outbox(clean_db, artifact_id)["state"] == "sent"
    [message] = robots.accepted(key)
    assert len(message.content.encode("utf-8")) <= 4096
    assert f"> **任务名称**：{name[:200]}" in message.content
    assert f"/artifacts/{artifact_id})" in message.content


# -- several notifiers -----------------------------------------------------------------


def start_notify_process(db_url: str, log_path: Path, **env: str) -> tuple[Any, Any]:
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "notify"],
        env=base_env(db_url, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return proc, log


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            events.append(record)
    return events


def test_two_notify_processes__never_send_a_row_twice(
    clean_db: str, robots: FakeRobotServer, tmp_path: Path
) -> None:
    key = robot_key()
    env = {
        "ARTIFACTD_WECOM_WEBHOOK_URL": robots.wecom_url(key),
        "ARTIFACTD_FRONTEND_URL": FRONTEND,
        "ARTIFACTD_NOTIFY_RATE_PER_MINUTE": "1000",
        "ARTIFACTD_NOTIFY_POLL_INTERVAL_S": "0.2",
    }
    # A little latency per message keeps both notifiers busy at once.
    robots.script(*[delayed(0.01)] * 200)
    logs = [tmp_path / "notify-a.log", tmp_path / "notify-b.log"]
    started = [start_notify_process(clean_db, path, **env) for path in logs]
    try:
        wait_until(
            lambda: all(log_events(p, "notifier.started") for p in logs),
            timeout_s=30,
            message="both notifiers started",
        )
        ids = finished_artifacts(clean_db, 60)
        wait_until(
            lambda: (
                scalar(
                    clean_db, "SELECT count(*) FROM notifications WHERE state = 'sent'"
                )
                == 60
            ),
            timeout_s=60,
            message="60 notifications sent",
        )
    finally:
        exits = []
        for proc, log in started:
            exits.append(stop_process(proc))
            log.close()

    links = Counter(
        m.content.rsplit("/artifacts/", 1)[1].rstrip(")") for m in robots.messages
    )
    assert len(robots.messages) == 60
    assert set(links) == set(ids)
    assert max(links.values()) == 1
    assert query(clean_db, "SELECT DISTINCT attempts FROM notifications") == [(1,)]
    sent_logged = [len(log_events(p, "notification.sent")) for p in logs]
    assert sum(sent_logged) == 60
    assert exits == [0, 0]


def test_rate_limit__holds_across_two_notifiers(
    clean_db: str, robots: FakeRobotServer
) -> None:
    key = robot_key()
    url = robots.wecom_url(key)
    robots.rate_per_minute = 5  # the fake would answer 45009 past this
    ids = finished_artifacts(clean_db, 12)

    def settled() -> bool:
        rows = query(
            clean_db,
            "SELECT state, locked_by IS NULL, next_attempt_at > now() + interval '20 seconds' "
            "FROM notifications",
        )
        sent = sum(1 for state, _, _ in rows if state == "sent")
        deferred = sum(
            1 for state, free, later in rows if state == "pending" and free and later
        )
        return sent == 5 and deferred == 7

    async def scenario() -> list[int]:
        common = {"wecom_webhook_url": url, "notify_rate_per_minute": 5}
        async with (
            running_notifier(clean_db, **common) as a,
            running_notifier(clean_db, **common) as b,
        ):
            a.wake()
            b.wake()
            await eventually(settled, message="5 sent and 7 deferred past the window")
            return [a.stats.deferred + b.stats.deferred, a.stats.sent + b.stats.sent]

    deferred, sent = run(scenario())

    assert len(robots.messages) == 5
    assert all(m.answer["errcode"] == 0 for m in robots.messages)
    assert sent == 5 and deferred >= 7
    rate_key = scalar(
        clean_db,
        "SELECT rate_key FROM notification_rate WHERE rate_key LIKE 'wecom:%%' "
        "GROUP BY rate_key HAVING count(*) = 5 LIMIT 1",
    )
    assert rate_key is not None and key not in rate_key
    unsent = query(
        clean_db,
        "SELECT attempts FROM notifications WHERE state = 'pending' AND artifact_id = ANY(%s)",
        (ids,),
    )
    assert unsent == [(0,)] * 7  # waiting on the rate limit is not an attempt


def test_claim__skips_live_locks_takes_expired_ones_and_fences_the_old_holder(
    clean_db: str, robots: FakeRobotServer
) -> None:
    key = robot_key()
    [artifact_id] = finished_artifacts(clean_db)
    query(
        clean_db,
        "UPDATE notifications SET locked_by = 'ghost', locked_until = now() + interval '1 hour' "
        "RETURNING id",
    )

    async def deliver_once() -> int:
        async with idle_notifier(
            clean_db, wecom_webhook_url=robots.wecom_url(key)
        ) as n:
            return await n.deliver_due()

    claimed_while_locked = run(deliver_once())
    query(
        clean_db,
        "UPDATE notifications SET locked_until = now() - interval '1 second' RETURNING id",
    )
    claimed_after_expiry = run(deliver_once())

    assert (claimed_while_locked, claimed_after_expiry) == (0, 1)
    assert outbox(clean_db, artifact_id)["state"] == "sent"
    assert len(robots.accepted(key)) == 1
    ghost_write = query(
        clean_db,
        RECORD_DEAD,
        {
            "id": outbox(clean_db, artifact_id)["id"],
            "notifier_id": "ghost",
            "error": "late",
        },
    )
    assert ghost_write == []
    assert outbox(clean_db, artifact_id)["state"] == "sent"


def test_claim__one_cached_plan_serves_every_claim(
    clean_db: str, robots: FakeRobotServer
) -> None:
    # With ``LIMIT $1`` PostgreSQL planned each outbox claim anew beside this
    # many pending rows; the notifier's claim has its batch size in the text.
    finished_artifacts(clean_db, 2000)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE notifications")
    settings = load_settings(
        database_url=clean_db, wecom_webhook_url=robots.wecom_url(robot_key())
    )

    async def claims() -> list[tuple[int, int]]:
        # One connection, so every claim runs on it and its prepared statement.
        async with AsyncConnectionPool(
            clean_db, min_size=1, max_size=1, kwargs={"autocommit": True}
        ) as pool:
            notifier = build_notifier(settings, pool, notifier_id="plans")
            assert notifier is not None
            try:
                for _ in range(30):
                    claimed = await notifier._claim()
                    assert len(claimed) == notifier.config.batch_size
            finally:
                await notifier.aclose()
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE '%%FROM notifications%%SKIP LOCKED%%'"
                )
                return await cur.fetchall()

    [(generic, custom)] = run(claims())

    assert custom <= 5
    assert generic == 30 - 5 - custom  # the first five runs are not prepared


# -- the command line --------------------------------------------------------------------


def cli(db_url: str, *args: str) -> Result:
    """The real ``artifactd`` command, in this process (starting one costs seconds)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return CliRunner().invoke(
            main,
            list(args),
            env={"ARTIFACTD_DATABASE_URL": db_url, "ARTIFACTD_LOG_FORMAT": "json"},
        )
    finally:
        # The command points logging at the runner's streams, closed after it.
        root.handlers[:] = handlers
        root.setLevel(level)


def test_cli__retry_puts_a_dead_row_back_and_it_is_delivered(
    clean_db: str, robots: FakeRobotServer
) -> None:
    key = robot_key()
    [artifact_id] = finished_artifacts(clean_db)
    notification_id = outbox(clean_db, artifact_id)["id"]
    query(
        clean_db,
        "UPDATE notifications SET state = 'dead', attempts = 8, last_error = 'robot gone' "
        "RETURNING id",
    )

    retried = cli(
        clean_db, "notifications", "retry", "--id", str(notification_id), "--json"
    )
    listed = cli(clean_db, "notifications", "list", "--state", "pending", "--json")
    again = cli(clean_db, "notifications", "retry", "--id", str(notification_id))

    assert retried.exit_code == 0, retried.stderr
    report = json.loads(retried.stdout)
    assert [r["id"] for r in report["retried"]] == [notification_id]
    assert [r["id"] for r in json.loads(listed.stdout)] == [notification_id]
    assert again.exit_code == 1 and "not dead" in again.stderr
    row = outbox(clean_db, artifact_id)
    assert (row["state"], row["attempts"], row["last_error"]) == (
        "pending",
        0,
        "robot gone",
    )

    async def scenario() -> None:
        async with running_notifier(clean_db, wecom_webhook_url=robots.wecom_url(key)):
            await eventually(lambda: outbox(clean_db, artifact_id)["state"] == "sent")

    run(scenario())
    assert len(robots.accepted(key)) == 1


def test_cli__notify_without_a_channel_exits_2_naming_the_settings(
    clean_db: str,
) -> None:
    result = cli(clean_db, "notify")

    assert result.exit_code == 2
    assert "ARTIFACTD_WECOM_WEBHOOK_URL" in result.stderr


def test_notifications_retry__unknown_option_values_are_usage_errors(
    clean_db: str,
) -> None:
    result = cli(clean_db, "notifications", "retry", "--artifact", "not-a-uuid")

    assert result.exit_code == 2
    assert "not an artifact id" in result.stderr
