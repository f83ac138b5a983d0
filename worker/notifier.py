"""The notifier: delivers the outbox, never one row from two places at once.

Outbox rows are written with the final state (``shared.queue``); this module
holds every statement that reads or moves them afterwards. A notifier claims
due rows in one short transaction (``FOR UPDATE SKIP LOCKED``) and marks them
with a short lock (``locked_by``, ``locked_until``), so notifiers in many
processes split the outbox; every later write is fenced by ``locked_by``.
Then, for each row: reserve a slot in the robot's fleet-wide rate limit →
render and send through the row's channel → record sent, a retry with
backoff, or dead.

Delivery is at least once. A notifier that dies mid-send leaves a lock that
runs out after ``lock_s``; the row is then claimed again, so a robot sees a
message twice only when its sender died between the robot's answer and the
write that records it.

It wakes on NOTIFY ``artifactd_outbox`` when it has its own listening
connection (``artifactd notify``), on ``wake()`` (inside a worker, each
final state this process writes), and otherwise every ``poll_interval_s``.
Nothing here writes to an artifact: a notification's fate never changes the
artifact's state.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import psycopg
import structlog
from psycopg.rows import class_row, dict_row
from psycopg_pool import AsyncConnectionPool

from shared import queue
from shared.artifact_types import ArtifactType, load_artifact_types
from shared.queue import (
    DEFER_NOTIFICATION,
    FIND_DEAD_NOTIFICATIONS,
    LOCK_RATE_KEY,
    NEXT_NOTIFICATION_DUE,
    RECORD_DEAD,
    RECORD_RETRY,
    RECORD_SENT,
    RELEASE_NOTIFICATIONS,
    RESERVE_RATE_SLOT,
    RETRY_DEAD_NOTIFICATIONS,
)
from shared.settings import Settings
from worker.channels import (
    Channel,
    DeliveryRefusedError,
    DeliveryRetryError,
    Notice,
    build_channels,
)
from worker.listener import Listener
from worker.retry import retry_delay_s

log = structlog.get_logger(__name__)

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)

MAX_BACKOFF_S = 600.0
RATE_WINDOW_S = 60
# First key of the two-key advisory locks that serialise one robot's slot
# reservations; two-key locks never collide with the one-key locks elsewhere.
RATE_LOCK_CLASS = 72_450_193
# Seconds a claim holds a row on top of two request timeouts: enough for the
# rate reservation, the send and the write that records it.
LOCK_MARGIN_S = 30.0

# -- the loop -----------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedNotification:
    """One outbox row this notifier holds, with what its message shows."""

    id: int
    artifact_id: str
    event: str
    channel: str
    attempts: int
    artifact_type: str
    task_id: str
    error_code: str | None
    task_name: str | None
    meeting_time: datetime | None
    note_type: str | None


@dataclass(frozen=True)
class NotifierConfig:
    notifier_id: str
    max_attempts: int = 8
    backoff_s: float = 5.0
    poll_interval_s: float = 5.0
    lock_s: float = 60.0
    # Rows claimed at once, all sent concurrently; a claim's lock covers them.
    batch_size: int = 4
    locale: str = "zh-CN"
    timezone: str = "UTC"
    frontend_url: str | None = None


@dataclass
class NotifierStats:
    sent: int = 0
    retried: int = 0
    dead: int = 0
    deferred: int = 0


class Notifier:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        channels: dict[str, Channel],
        config: NotifierConfig,
        *,
        artifact_types: dict[str, ArtifactType] | None = None,
        listen_url: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.id = config.notifier_id
        self.stats = NotifierStats()
        self._pool = pool
        self._channels = channels
        self._types = artifact_types or {}
        self._listen_url = listen_url
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    # -- public ---------------------------------------------------------------

    def wake(self) -> None:
        """Look at the outbox now instead of at the next poll."""
        self._wake.set()

    def on_outcome(self, job: Any, outcome: Any) -> None:
        """Worker hook: a final state written here means new outbox rows."""
        if outcome.written and outcome.state in ("success", "failed"):
            self._wake.set()

    def stop(self) -> None:
        """Stop claiming; sends in flight finish, claimed rows not begun are freed."""
        if not self._stopping.is_set():
            log.info("notifier.stopping", notifier_id=self.id)
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped (or cancelled, as inside a worker)."""
        log.info(
            "notifier.started",
            notifier_id=self.id,
            channels=list(self._channels),
            listening=self._listen_url is not None,
            poll_interval_s=self.config.poll_interval_s,
        )
        listener = None
        if self._listen_url is not None:
            listener = asyncio.create_task(
                Listener(
                    self._listen_url, [queue.OUTBOX_CHANNEL], self._on_notify
                ).run(),
                name="notifier-listener",
            )
        trouble_s = 0.2
        try:
            while not self._stopping.is_set():
                # Cleared before looking, so a wake-up during the claim counts.
                self._wake.clear()
                try:
                    claimed = await self.deliver_due()
                except DB_ERRORS as exc:
                    log.warning(
                        "notifier.database_error",
                        error=_one_line(exc),
                        retry_in_s=trouble_s,
                    )
                    await self._sleep(trouble_s)
                    trouble_s = min(trouble_s * 2, 5.0)
                    continue
                except Exception:
                    # A defect, not the database: keep delivering what can be.
                    log.error("notifier.failed", exc_info=True, retry_in_s=trouble_s)
                    await self._sleep(trouble_s)
                    trouble_s = min(trouble_s * 2, 30.0)
                    continue
                trouble_s = 0.2
                if claimed >= self.config.batch_size:
                    continue
                await self._sleep(await self._idle_wait_s())
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            await self.aclose()
            log.info("notifier.stopped", notifier_id=self.id, **vars(self.stats))

    async def deliver_due(self) -> int:
        """Claim one batch of due rows and deliver it; returns how many were claimed."""
        rows = await self._claim()
        if not rows:
            return 0

        unstarted = {row.id for row in rows}
        try:
            await asyncio.gather(*(self._start(unstarted, row) for row in rows))
        finally:
            # Stopping or cancelled: rows not yet begun go back at once.
            if unstarted:
                await asyncio.shield(self._release(sorted(unstarted)))
        return len(rows)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- steps ----------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        self._wake.set()

    async def _claim(self) -> list[ClaimedNotification]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ClaimedNotification))
            await cur.execute(
                queue.claim_notifications_for(
                    self.config.batch_size, tuple(sorted(self._channels))
                ),
                {
                    "notifier_id": self.id,
                    "lock_s": self.config.lock_s,
                },
            )
            return await cur.fetchall()

    async def _start(self, unstarted: set[int], row: ClaimedNotification) -> None:
        if self._stopping.is_set():
            return
        unstarted.discard(row.id)
        await self._deliver(row)

    async def _deliver(self, row: ClaimedNotification) -> None:
        """Reserve a rate slot → send → record the outcome."""
        channel = self._channels[row.channel]
        attempt = row.attempts + 1
        bound = log.bind(
            notification_id=row.id,
            artifact_id=row.artifact_id,
            channel=row.channel,
            event=row.event,
            attempt=attempt,
        )
        if channel.rate_per_minute is not None:
            wait_s = await self._reserve_slot(channel)
            if wait_s is not None:
                await self._record(DEFER_NOTIFICATION, row, delay_s=wait_s)
                self.stats.deferred += 1
                bound.info(
                    "notification.deferred",
                    retry_in_s=round(wait_s, 2),
                    reason="robot rate limit",
                )
                return

        started = time.monotonic()
        try:
            await channel.send(self._notice(row), self._client)
        except DeliveryRefusedError as exc:
            await self._record(RECORD_DEAD, row, error=exc.reason)
            self.stats.dead += 1
            bound.error("notification.dead", error=exc.reason)
            return
        except DeliveryRetryError as exc:
            await self._retry(row, bound, exc.reason, exc.retry_after_s)
            return
        except Exception as exc:
            # Rendering or a channel defect; the traceback goes to the log.
            bound.error("notification.send_crashed", exc_info=True)
            await self._retry(row, bound, f"internal error: {type(exc).__name__}", None)
            return
        duration_ms = round((time.monotonic() - started) * 1000, 1)

        written = await self._record(RECORD_SENT, row)
        self.stats.sent += 1
        bound.info(
            "notification.sent", duration_ms=duration_ms, recorded=written is not None
        )

    async def _retry(
        self,
        row: ClaimedNotification,
        bound: Any,
        reason: str,
        retry_after_s: float | None,
    ) -> None:
        attempt = row.attempts + 1
        delay_s = retry_delay_s(
            attempt, retry_after_s, base_s=self.config.backoff_s, cap_s=MAX_BACKOFF_S
        )
        state = await self._record(
            RECORD_RETRY,
            row,
            delay_s=delay_s,
            error=reason,
            max_attempts=self.config.max_attempts,
        )
        if state == "dead":
            self.stats.dead += 1
            bound.error("notification.dead", error=reason, reason="attempts exhausted")
        else:
            self.stats.retried += 1
            bound.warning(
                "notification.retry_scheduled",
                error=reason,
                retry_in_s=round(delay_s, 2),
            )

    async def _reserve_slot(self, channel: Channel) -> float | None:
        """None when a slot was reserved, else seconds until one frees up."""
        async with self._pool.connection() as conn, conn.transaction():
            key = {"rate_key": channel.rate_key}
            await conn.execute(LOCK_RATE_KEY, {**key, "lock_class": RATE_LOCK_CLASS})
            cur = await conn.execute(
                RESERVE_RATE_SLOT,
                {
                    **key,
                    "per_minute": channel.rate_per_minute,
                    "window_s": RATE_WINDOW_S,
                },
            )
            row = await cur.fetchone()
        assert row is not None
        reserved, wait_s = row
        if reserved:
            return None
        # A slot frees when the oldest leaves the window; a hair later is safe.
        return max(float(wait_s or 0.0), 0.0) + 0.05

    async def _record(
        self, statement: str, row: ClaimedNotification, **params: Any
    ) -> str | None:
        """Run one fenced write; None when the lock had passed to another notifier.

        The database may blink between send and record; a few quick retries
        keep the row from being sent again once its lock runs out.
        """
        params.update(id=row.id, notifier_id=self.id)
        for delay_s in (0.2, 0.5, 1.0, 2.0, None):
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(statement, params)
                    result = await cur.fetchone()
                break
            except DB_ERRORS as exc:
                if delay_s is None:
                    log.error(
                        "notification.record_failed",
                        notification_id=row.id,
                        error=_one_line(exc),
                        action="lock will expire",
                    )
                    return None
                log.warning(
                    "notification.record_retry",
                    notification_id=row.id,
                    error=_one_line(exc),
                    retry_in_s=delay_s,
                )
                await asyncio.sleep(delay_s)
        if result is None:
            log.warning(
                "notification.lock_lost",
                notification_id=row.id,
                action="another notifier holds the row",
            )
            return None
        return str(result[0])

    async def _release(self, ids: list[int]) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    RELEASE_NOTIFICATIONS, {"ids": ids, "notifier_id": self.id}
                )
        except DB_ERRORS as exc:
            log.warning(
                "notifier.release_failed",
                count=len(ids),
                error=_one_line(exc),
                action="locks will expire",
            )

    def _notice(self, row: ClaimedNotification) -> Notice:
        locale = self.config.locale
        artifact_type = self._types.get(row.artifact_type)
        type_title = (
            artifact_type.title_for(locale) if artifact_type else row.artifact_type
        )
        note_type = row.note_type or ""
        if note_type in self._types:
            note_type = self._types[note_type].title_for(locale)
        return Notice(
            notification_id=row.id,
            artifact_id=row.artifact_id,
            event="success" if row.event == "success" else "failed",
            artifact_type=row.artifact_type,
            type_title=type_title,
            note_type=note_type,
            task_id=row.task_id,
            task_name=row.task_name,
            meeting_time=row.meeting_time,
            error_code=row.error_code,
            link=artifact_link(self.config.frontend_url, row.artifact_id),
            locale=locale,
            timezone=self.config.timezone,
        )

    async def _sleep(self, timeout_s: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
        # that lands as the wake-up does, and a worker's shutdown cancels us.
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _idle_wait_s(self) -> float:
        wait_s = self.config.poll_interval_s
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    NEXT_NOTIFICATION_DUE, {"channels": list(self._channels)}
                )
                row = await cur.fetchone()
        except DB_ERRORS:
            return wait_s
        if row and row[0] is not None:
            wait_s = min(wait_s, max(float(row[0]), 0.01))
        return wait_s


def artifact_link(frontend_url: str | None, artifact_id: str) -> str | None:
    """Where a reader opens the artifact: ``<frontend>/artifacts/<id>``."""
    if not frontend_url:
        return None
    return f"{frontend_url.rstrip('/')}/artifacts/{artifact_id}"


def build_notifier(
    settings: Settings,
    pool: AsyncConnectionPool,
    *,
    notifier_id: str,
    listen_url: str | None = None,
    artifact_types: dict[str, ArtifactType] | None = None,
) -> Notifier | None:
    """A notifier for the configured channels, or None when there are none."""
    channels = build_channels(settings)
    if not channels:
        return None
    config = NotifierConfig(
        notifier_id=notifier_id,
        max_attempts=settings.notify_max_attempts,
        backoff_s=settings.notify_backoff_s,
        poll_interval_s=settings.notify_poll_interval_s,
        lock_s=2 * settings.notify_timeout_s + LOCK_MARGIN_S,
        locale=settings.locale,
        timezone=settings.timezone,
        frontend_url=settings.frontend_url,
    )
    types = (
        artifact_types
        if artifact_types is not None
        else load_artifact_types(settings.types_dir)
    )
    return Notifier(pool, channels, config, artifact_types=types, listen_url=listen_url)


def retry_dead(
    conn: psycopg.Connection,
    *,
    ids: list[int] | None = None,
    artifact_id: str | None = None,
    channel: str | None = None,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Dead rows matching every given filter back to pending; returns them."""
    params = {"ids": ids or None, "artifact_id": artifact_id, "channel": channel}
    statement = FIND_DEAD_NOTIFICATIONS if dry_run else RETRY_DEAD_NOTIFICATIONS
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement, params)
        rows = cur.fetchall()
    for row in rows:
        row.pop("notified", None)
    return rows


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
