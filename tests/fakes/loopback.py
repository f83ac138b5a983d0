"""What every loopback fake shares: a threaded HTTP server, started and stopped.

A fake subclasses ``LoopbackServer`` and names its request handler (and,
for typing, its server class); each handler reaches its fake through
``self.server.fake``. ``start()`` binds (port 0 picks a free one), serves
from a daemon thread and returns the base URL; ``stop()`` ends serving and
joins the thread. Both are idempotent, and the fake is a context manager.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


class LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
    fake: Any


class LoopbackServer:
    handler: ClassVar[type[BaseHTTPRequestHandler]]
    server_class: ClassVar[type[LoopbackHTTPServer]] = LoopbackHTTPServer
    thread_name: ClassVar[str] = "fake-server"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        self._on_start()
        server = self.server_class((self.host, self.port), self.handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._on_stop()
        server.shutdown()
        self._after_shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # Hooks for a fake with state of its own around the server's life.
    def _on_start(self) -> None:
        """Before the server binds."""

    def _on_stop(self) -> None:
        """Before serving stops: tell handlers still running to give up."""

    def _after_shutdown(self) -> None:
        """After serving stopped, before the socket closes."""
