"""A TCP relay in front of PostgreSQL that can lose a commit's reply.

``cut_after_commit(marker)`` arms it: on the next connection whose client
sends ``marker`` (a piece of a statement's SQL), the relay lets the server
run the statement, and when the server next says it is ready for a query
outside any transaction (``ReadyForQuery`` with status ``I``: the
transaction is over, here committed) the relay closes both sides without
passing that reply on. The client then sees the connection drop while its
transaction is in fact committed: the case a writer must not take for a
failure. Arm it while the connection that will carry the marker is idle,
so the server's next bytes begin a message.

Clients must connect with ``sslmode=disable`` and ``gssencmode=disable``
(``url`` adds both) so the relay can read the server's message frames.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from contextlib import suppress

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class PgProxy:
    def __init__(self, server_url: str) -> None:
        params = conninfo_to_dict(server_url)
        self._server_url = server_url
        self._target = (
            str(params.get("host") or "127.0.0.1"),
            int(params.get("port") or 5432),
        )
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._on_cut: Callable[[], None] | None = None
        self.cuts = 0
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True, name="pg-proxy").start()

    def url(self) -> str:
        """The server's URL, pointed at the relay."""
        return make_conninfo(
            self._server_url,
            host="127.0.0.1",
            port=str(self.port),
            sslmode="disable",
            gssencmode="disable",
        )

    def cut_after_commit(
        self, marker: bytes, on_cut: Callable[[], None] | None = None
    ) -> None:
        """Lose the reply that follows the next commit of SQL containing ``marker``.

        ``on_cut`` runs after the server committed and before the client
        sees its connection close.
        """
        with self._lock:
            self._marker = marker
            self._on_cut = on_cut

    def close(self) -> None:
        self._closed.set()
        with suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                with suppress(OSError):
                    sock.close()

    def __enter__(self) -> PgProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            with self._lock:
                self._sockets.update((client, server))
            link = _Link(self, client, server)
            threading.Thread(target=link.upstream, daemon=True).start()
            threading.Thread(target=link.downstream, daemon=True).start()

    def _take_marker(self, data: bytes) -> bool:
        """True if ``data`` holds the armed marker; disarms it."""
        with self._lock:
            if self._marker is None or self._marker not in data:
                return False
            self._marker = None
            return True

    def _cut(self, link: _Link) -> None:
        with self._lock:
            on_cut, self._on_cut = self._on_cut, None
            self.cuts += 1
        if on_cut is not None:
            on_cut()
        link.close()


class _Link:
    """One client connection and its server connection."""

    def __init__(
        self, proxy: PgProxy, client: socket.socket, server: socket.socket
    ) -> None:
        self._proxy = proxy
        self._client = client
        self._server = server
        self._armed = threading.Event()
        self._tail = b""

    def upstream(self) -> None:
        """Client to server, watching for the marker."""
        while data := self._recv(self._client):
            # A marker split across two reads is still seen.
            if not self._armed.is_set() and self._proxy._take_marker(self._tail + data):
                self._armed.set()
            self._tail = data[-256:]
            if not self._send(self._server, data):
                break
        self.close()

    def downstream(self) -> None:
        """Server to client, message by message once armed."""
        buffer = b""
        while data := self._recv(self._server):
            if not self._armed.is_set():
                if not self._send(self._client, data):
                    break
                continue
            buffer += data
            # Frames: a type byte, then a length that counts itself.
            while len(buffer) >= 5:
                kind = buffer[:1]
                (length,) = struct.unpack("!I", buffer[1:5])
                if len(buffer) < 1 + length:
                    break
                frame, buffer = buffer[: 1 + length], buffer[1 + length :]
                if kind == b"Z" and frame[5:6] == b"I":
                    self._proxy._cut(self)
                    return
                if not self._send(self._client, frame):
                    self.close()
                    return
        self.close()

    def close(self) -> None:
        for sock in (self._client, self._server):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                sock.close()

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
        except OSError:
            return False
        return True
