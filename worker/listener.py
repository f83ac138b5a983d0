"""The one LISTEN connection per worker process.

It wakes the claim loop when rows are inserted anywhere. If the connection
drops it reconnects with backoff and wakes the loop once on return, since
notifications sent while it was away are lost; the claim loop polls in the
meantime, so nothing waits longer than a poll interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import structlog
from psycopg import sql

log = structlog.get_logger(__name__)

# A LISTEN connection can die silently (server killed, network cut); probing it
# this often bounds how long the worker runs on polling alone.
PROBE_INTERVAL_S = 10.0


class Listener:
    def __init__(
        self, url: str, channels: list[str], on_notify: Callable[[str, str], None]
    ) -> None:
        self._url = url
        self._channels = channels
        self._on_notify = on_notify
        self.connected = asyncio.Event()

    async def run(self) -> None:
        delay_s = 0.1
        while True:
            try:
                await self._listen()
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                was_connected = self.connected.is_set()
                self.connected.clear()
                if was_connected:
                    # A connection that worked starts the backoff over; else a
                    # drop after a long outage would wait the longest delay.
                    delay_s = 0.1
                log.warning(
                    "listener.disconnected"
                    if was_connected
                    else "listener.connect_failed",
                    error=" ".join(str(exc).split()),
                    retry_in_s=delay_s,
                    action="polling until reconnected",
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
            else:
                delay_s = 0.1

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        async with conn:
            for channel in self._channels:
                # Quoted by psycopg, not by an f-string: no SQL built from text.
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.connected.set()
            # INFO: a reconnect after ``listener.disconnected`` must be visible,
            # or an operator cannot tell NOTIFY wake-ups from slow polling.
            log.info("listener.connected", channels=self._channels)
            # Anything sent while we were away is lost: look once now.
            self._on_notify("", "")
            while True:
                async for notify in conn.notifies(timeout=PROBE_INTERVAL_S):
                    self._on_notify(notify.channel, notify.payload)
                await conn.execute("SELECT 1")
