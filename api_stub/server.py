"""Serving the app with uvicorn: in the foreground for ``artifactd api``, or
in a background thread for tests and embedding.

``ApiServer`` is uvicorn's server with two additions: it logs
``api.started`` with the port it really bound (``--port 0`` picks a free
one), and when asked to stop it ends open event streams first, which uvicorn
would otherwise wait on until its graceful-shutdown timeout.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
import uvicorn
from fastapi import FastAPI

log = structlog.get_logger(__name__)

# Requests still running this long after a stop is asked are cancelled.
SHUTDOWN_GRACE_S = 10
THREAD_START_TIMEOUT_S = 30.0


class ApiServer(uvicorn.Server):
    def __init__(
        self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",
            # Logging is ours (shared.logging); one api.request line replaces
            # uvicorn's access log.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            server_header=False,
        )
        super().__init__(config)
        self._app = app
        self.ready = threading.Event()

    @property
    def port(self) -> int:
        """The port bound, once started."""
        sockname = self.servers[0].sockets[0].getsockname()
        return int(sockname[1])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("api.started", host=self.config.host, port=self.port)
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("api.stopping")
        state = getattr(self._app.state, "artifactd", None)
        if state is not None:
            state.events.close()
        await super().shutdown(sockets)
        log.info("api.stopped")


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully and return."""
    server = ApiServer(app, host=host, port=port)
    # Binding here, before the lifespan starts, makes a taken port a plain
    # start-up error (uvicorn logs it and exits 1).
    sock = server.config.bind_socket()
    # Once stopped, uvicorn raises the stopping signal again under the
    # handler that was there before it; this one lets ``serve`` return, so
    # a graceful stop exits 0 instead of dying of that signal.
    stopping = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _already_handled) for sig in stopping}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _already_handled(signum: int, frame: object) -> None:
    """The server has stopped already; nothing more to do for this signal."""


@contextmanager
def serve_in_thread(app: FastAPI, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` on a free port in a background thread; yields its base URL."""
    server = ApiServer(app, host=host, port=0)
    thread = threading.Thread(target=server.run, name="artifactd-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + THREAD_START_TIMEOUT_S
        while not server.ready.wait(0.05):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start; see its log")
        yield f"http://{host}:{server.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SHUTDOWN_GRACE_S + 5)
