"""systemd's notify protocol, spoken directly, and start-up under a manager.

``Notifier`` sends sd_notify datagrams (``READY=1``, ``STATUS=…``,
``WATCHDOG=1``, ``STOPPING=1``) to ``$NOTIFY_SOCKET``: a path, or an abstract
socket written with a leading ``@``. Without that variable every method does
nothing and logs nothing, so a worker started from a terminal is unchanged.

The worker announces READY only from its running event loop, which it
reaches after the database has answered and the schema was found current;
``wait_for_database`` is how it gets there under systemd. Watchdog pings
come from the same event loop, so a loop that stops turning stops pinging and
systemd restarts the process. No libsystemd binding is needed.

The variables read here (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
``WATCHDOG_PID``) are the service manager's protocol, not settings; they are
read once and removed from the environment, so that child processes (an
embedded PostgreSQL) do not talk to systemd on our behalf.
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import os
import signal
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING

import structlog

from shared.errors import DatabaseError, SchemaOutOfDateError

if TYPE_CHECKING:
    from worker.metrics import QueueProbe
    from worker.runner import Worker

log = structlog.get_logger(__name__)

# How often the status line is recomputed; it is sent only when it changed.
STATUS_CHECK_S = 1.0

# Waiting for the database at start: first retry, then doubling up to this.
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 15.0


class Notifier:
    """Sends sd_notify messages; a no-op when there is no notify socket."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self.watchdog_usec = watchdog_usec if self._address is not None else None
        self._sock: socket.socket | None = None
        self._warned = False
        self._stopping_sent = False
        self._last_status: str | None = None

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None
    ) -> Notifier:
        """Read (and remove) the notify socket and watchdog variables."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        return cls(address, _watchdog_usec(usec_text, pid_text))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half the watchdog timeout, as systemd recommends; None when off."""
        if not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    # -- messages -------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when it went out."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Never block the event loop: a full queue drops one message,
                # and the next watchdog ping or status line follows anyway.
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "systemd.notify_failed", error=str(exc), action="message dropped"
                )
            else:
                log.debug("systemd.notify_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> None:
        self._last_status = status
        if self.notify("READY=1", f"STATUS={status}"):
            log.info("systemd.ready", watchdog_ping_s=self.watchdog_interval_s)

    def status(self, status: str) -> None:
        """Send the status line when it differs from the last one sent."""
        if status == self._last_status:
            return
        self._last_status = status
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        """Tell systemd the stop has begun; sent once."""
        if self._stopping_sent:
            return
        self._stopping_sent = True
        self._last_status = status
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- inside the worker ------------------------------------------------------

    async def run(self, worker: Worker, probe: QueueProbe | None) -> None:
        """READY once the worker runs, then status lines and watchdog pings.

        Runs as one of the worker's extra loops, so it starts only after the
        pool has connected and the schema check passed.
        """
        if probe is not None and probe.latest is None:
            await probe.sample()
        self.ready(status_line(worker, probe))
        if self.watchdog_interval_s is not None:
            # A watchdog kill is SIGABRT: have Python print every thread's
            # stack to the journal first, so the stuck spot is on record.
            faulthandler.enable()
        loops = [self._status_loop(worker, probe)]
        if self.watchdog_interval_s is not None:
            loops.append(self._watchdog_loop(self.watchdog_interval_s))
        await asyncio.gather(*loops)

    async def _status_loop(self, worker: Worker, probe: QueueProbe | None) -> None:
        while True:
            await asyncio.sleep(STATUS_CHECK_S)
            if not self._stopping_sent:
                self.status(status_line(worker, probe))
            else:
                self.status(stopping_line(worker))

    async def _watchdog_loop(self, interval_s: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(interval_s)

    def install_signal_handlers(self, worker: Worker) -> None:
        """SIGTERM and SIGINT announce STOPPING=1, then stop the worker.

        Replaces the worker's own handlers for those signals, keeping what
        they do (``worker.stop``) and adding the announcement in front.
        """
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            self.stopping(stopping_line(worker))
            worker.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)


@functools.cache
def notifier() -> Notifier:
    """This process's notifier, built from the environment on first use."""
    return Notifier.from_environment()


def status_line(worker: Worker, probe: QueueProbe | None) -> str:
    """``3/8 in flight, 120 queued, 40 leased fleet-wide`` and any fleet pause."""
    text = f"{worker.in_flight}/{worker.config.concurrency} in flight"
    sample = probe.latest if probe is not None else None
    if sample is None:
        return text + ", queue depth unknown"
    text += f", {sample.waiting} queued, {sample.leased} leased fleet-wide"
    if sample.fleet_pause_s > 0:
        text += f", fleet paused {sample.fleet_pause_s:.0f}s"
    return text


def stopping_line(worker: Worker) -> str:
    grace_s = worker.config.shutdown_grace_s
    return f"stopping: {worker.in_flight} in flight, up to {grace_s:g}s to finish"


def wait_for_database(check: Callable[[], None], notifier: Notifier) -> None:
    """Run ``check`` (database answers, schema current) until it passes.

    Outside a service manager the first failure propagates, so the command
    exits 3 at once. Under systemd an unreachable database is waited for,
    with a warning and a STATUS line naming the next retry, and READY is
    not sent meanwhile; the unit's TimeoutStartSec bounds the wait. A schema
    that is behind the code is never waited for: it needs an operator.
    """
    if not notifier.enabled:
        check()
        return

    delay_s = FIRST_RETRY_S
    attempt = 1
    while True:
        try:
            check()
            return
        except SchemaOutOfDateError:
            raise
        except DatabaseError as exc:
            error = " ".join(str(exc).split())
            log.warning(
                "worker.database_unreachable",
                error=error,
                attempt=attempt,
                retry_in_s=delay_s,
            )
            notifier.status(f"waiting for PostgreSQL (retry in {delay_s:g}s): {error}")
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, MAX_RETRY_S)
        attempt += 1


def _socket_address(address: str) -> str | bytes | None:
    if address.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte, not a path.
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("/"):
        return address
    # systemd 254+ may hand out vsock: addresses (for VMs); not spoken here.
    log.debug("systemd.notify_socket_unsupported", address=address)
    return None


def _watchdog_usec(usec_text: str | None, pid_text: str | None) -> int | None:
    """WATCHDOG_USEC when it is meant for this process, else None."""
    if not usec_text:
        return None
    if pid_text and pid_text.strip() != str(os.getpid()):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.debug("systemd.watchdog_usec_invalid", value=usec_text)
        return None
    return usec if usec > 0 else None
