"""The worker speaks systemd's notify protocol to a socket the test owns.

The test plays the service manager: it binds a unix datagram socket, starts
``python -m worker run`` with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` pointing
at it, and reads what arrives. "The database is down" is a loopback port
nobody listens on; "it came back" is a TCP forwarder to the real server
opened on that same port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import structlog

from tests.support.processes import WorkerProcess, seed, wait_until
from worker.systemd import Notifier

Message = dict[str, str]


class NotifySocket:
    """A unix datagram socket collecting sd_notify messages in a thread."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[Message] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(
                line.split("=", 1) for line in data.decode().splitlines() if line
            )
            self.messages.append(fields)

    def index(self, key: str, start: int = 0) -> int | None:
        """Position of the first message from ``start`` carrying ``key``."""
        for i, message in enumerate(list(self.messages)[start:], start):
            if key in message:
                return i
        return None

    def count(self, key: str, value: str | None = None) -> int:
        return sum(
            1
            for m in list(self.messages)
            if key in m and (value is None or m[key] == value)
        )

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Forwarder:
    """Accepts on a loopback port and pipes each connection to ``target``."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pipe, args=(src, dst), daemon=True
                ).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()


def closed_port() -> int:
    """A loopback port with nothing listening on it (for now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def via_port(url: str, port: int) -> str:
    """``url`` (a postgresql:// URL) with its host and port swapped for loopback."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))


def pg_address(url: str) -> tuple[str, int]:
    with psycopg.connect(url) as conn:
        return conn.info.host, int(conn.info.port)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[NotifySocket, str]]:
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 100:  # sun_path holds 108 bytes
        pytest.fail(f"tmp_path too long for a unix socket: {path}")
    collector = NotifySocket(str(path))
    yield collector, str(path)
    collector.close()


def test_run__ready_only_once_the_database_answers_then_status_and_watchdog(
    clean_db: str, tmp_path: Path, notify_socket: tuple[NotifySocket, str]
) -> None:
    notify, path = notify_socket
    seed(clean_db, 3, run_after=datetime.now(UTC) + timedelta(hours=1))
    port = closed_port()
    worker = WorkerProcess(
        via_port(clean_db, port),
        tmp_path / "worker.log",
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC="400000",
        ARTIFACTD_CONCURRENCY="2",
    )
    forwarder: Forwarder | None = None
    try:
        wait_until(
            lambda: notify.count("STATUS") >= 2,
            timeout_s=30,
            message="two waiting STATUS lines",
        )
        assert notify.count("READY") == 0
        assert notify.count("WATCHDOG") == 0
        assert "waiting for PostgreSQL" in notify.messages[0]["STATUS"]
        assert '"worker.database_unreachable"' in worker.log_text()
        assert '"retry_in_s"' in worker.log_text()
        assert worker.proc.poll() is None

        forwarder = Forwarder(port, pg_address(clean_db))
        wait_until(lambda: notify.count("READY") == 1, timeout_s=30, message="READY=1")
        ready = notify.index("READY")
        assert ready is not None
        wait_until(
            lambda: notify.count("WATCHDOG") >= 3,
            timeout_s=30,
            message="three WATCHDOG pings",
        )
        wait_until(
            lambda: any(
                "3 queued" in m.get("STATUS", "") for m in notify.messages[ready:]
            ),
            timeout_s=30,
            message="a STATUS line with the queue depth",
        )
        worker.signal(signal.SIGTERM)
        wait_until(
            lambda: notify.count("STOPPING") == 1, timeout_s=30, message="STOPPING=1"
        )
        assert worker.wait(30) == 0
    finally:
        worker.kill()
        if forwarder is not None:
            forwarder.close()

    messages = list(notify.messages)
    assert messages[ready]["READY"] == "1"
    assert messages[ready]["STATUS"].startswith("0/2 in flight")
    waiting = [
        i for i, m in enumerate(messages) if "waiting for" in m.get("STATUS", "")
    ]
    watchdog = [i for i, m in enumerate(messages) if m.get("WATCHDOG") == "1"]
    stopping = notify.index("STOPPING")
    assert stopping is not None
    assert max(waiting) < ready < min(watchdog) < stopping
    assert messages[stopping]["STOPPING"] == "1"
    assert messages[stopping]["STATUS"].startswith("stopping: 0 in flight")
    assert "3 queued, 0 leased fleet-wide" in "".join(
        m.get("STATUS", "") for m in messages
    )


def test_run__without_a_notify_socket_exits_3_when_the_database_is_down(
    clean_db: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(via_port(clean_db, closed_port()), tmp_path / "worker.log")

    code = worker.wait(60)

    assert code == 3
    assert "cannot reach PostgreSQL" in worker.log_text()
    assert "database_unreachable" not in worker.log_text()


def test_run__under_systemd_an_old_schema_exits_2_without_ready(
    empty_db: str, tmp_path: Path, notify_socket: tuple[NotifySocket, str]
) -> None:
    notify, path = notify_socket
    worker = WorkerProcess(empty_db, tmp_path / "worker.log", NOTIFY_SOCKET=path)

    code = worker.wait(60)

    assert code == 2
    assert "artifactd migrate" in worker.log_text()
    assert notify.count("READY") == 0


# -- the notifier on its own -----------------------------------------------------


def test_notifier__speaks_to_an_abstract_socket() -> None:
    name = f"artifactd-test-{uuid.uuid4().hex}"
    collector = NotifySocket(b"\0" + name.encode())
    try:
        notifier = Notifier(f"@{name}")

        sent = notifier.notify("READY=1", "STATUS=ok")

        wait_until(lambda: collector.messages, timeout_s=5, message="one datagram")
    finally:
        collector.close()
        notifier.close()
    assert sent is True
    assert collector.messages == [{"READY": "1", "STATUS": "ok"}]


def test_notifier__from_environment_takes_the_variables_out() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }

    notifier = Notifier.from_environment(env)

    assert notifier.enabled
    assert notifier.watchdog_interval_s == 15.0
    assert env == {"PATH": "/usr/bin"}


def test_notifier__watchdog_meant_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}

    notifier = Notifier.from_environment(env)

    assert notifier.enabled
    assert notifier.watchdog_interval_s is None


def test_notifier__without_a_socket_sends_and_logs_nothing() -> None:
    notifier = Notifier.from_environment({})

    with structlog.testing.capture_logs() as logs:
        results = [notifier.notify("READY=1"), notifier.notify("WATCHDOG=1")]
        notifier.ready("ok")
        notifier.stopping()

    assert not notifier.enabled
    assert results == [False, False]
    assert logs == []


def test_notifier__a_missing_socket_warns_once(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))

    with structlog.testing.capture_logs() as logs:
        results = [notifier.notify("WATCHDOG=1") for _ in range(3)]

    assert results == [False, False, False]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["systemd.notify_failed"]
