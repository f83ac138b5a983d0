"""One LISTEN connection per API process, fanned out to every open event stream.

Every statement that changes rows' state or ``metadata.progress`` sends one
NOTIFY on channel ``artifactd_events`` whose payload is a JSON array of
``{"artifact_id", "state"}`` (a single object is accepted too). ``EventHub``
holds the only listening connection and wakes the streams subscribed to that
artifact; a stream then reads the row itself, so a wake-up says only "look
again" and several of them coalesce into one read.

If the connection drops, the hub reconnects with backoff and wakes every
stream once it is back, since notifications sent meanwhile are lost; while it
is away, ``connected`` is False and streams re-read on each keep-alive tick.
"""

from __future__ import annotations

import asyncio
import json

import psycopg
import structlog

from shared import queue

log = structlog.get_logger(__name__)

# A LISTEN connection can die silently (server killed, network cut); probing it
# this often bounds how long streams go on notifications that never come.
PROBE_INTERVAL_S = 10.0
MAX_RECONNECT_DELAY_S = 5.0
# How the listening connection shows in pg_stat_activity.
APPLICATION_NAME = "artifactd-api-events"


class Subscription:
    """One open stream's interest in one artifact."""

    def __init__(self, artifact_id: str) -> None:
        self.artifact_id = artifact_id
        self.closed = False
        self._changed = asyncio.Event()

    def wake(self) -> None:
        self._changed.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken within ``timeout_s`` (or closed), False on timeout."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            return False
        self._changed.clear()
        return True


class EventHub:
    def __init__(self, url: str) -> None:
        self._url = url
        self._subscribers: dict[str, set[Subscription]] = {}
        self._closed = False
        self.connected = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def subscribe(self, artifact_id: str) -> Subscription:
        sub = Subscription(artifact_id)
        sub.closed = self._closed
        self._subscribers.setdefault(artifact_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.artifact_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subscribers[sub.artifact_id]

    def close(self) -> None:
        """End every stream, so a stopping server need not wait on them."""
        self._closed = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.closed = True
                sub.wake()

    def _wake_all(self) -> None:
        for subs in self._subscribers.values():
            for sub in subs:
                sub.wake()

    def _dispatch(self, payload: str) -> None:
        try:
            changes = json.loads(payload)
            if isinstance(
                changes, dict
            ):  # one change, as a hand-written NOTIFY may send
                changes = [changes]
            artifact_ids = [str(change["artifact_id"]) for change in changes]
        except (ValueError, KeyError, TypeError):
            log.warning("events.bad_payload", payload=payload[:200], action="ignored")
            return
        for artifact_id in artifact_ids:
            for sub in self._subscribers.get(artifact_id, ()):
                sub.wake()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection drops."""
        delay_s = 0.1
        while True:
            try:
                await self._listen()
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                was_connected = self.connected
                self.connected = False
                log.warning(
                    "events.disconnected" if was_connected else "events.connect_failed",
                    error=" ".join(str(exc).split()),
                    retry_in_s=delay_s,
                    action="streams poll on each keep-alive until reconnected",
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)
            else:
                delay_s = 0.1

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=10,
            application_name=APPLICATION_NAME,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        async with conn:
            await conn.execute(f'LISTEN "{queue.EVENTS_CHANNEL}"')
            self.connected = True
            log.info("events.listening", channel=queue.EVENTS_CHANNEL)
            # Anything sent while we were away is lost: every stream looks again.
            self._wake_all()
            while True:
                async for notify in conn.notifies(timeout=PROBE_INTERVAL_S):
                    self._dispatch(notify.payload)
                await conn.execute("SELECT 1")
