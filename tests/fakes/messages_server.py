"""A fake Anthropic Messages API on loopback, for the real SDK to talk to.

``FakeMessagesServer`` is a real HTTP/1.1 server (the standard library's
threading server, run in a background thread of the test process), so
workers in other processes can reach it through ``ANTHROPIC_BASE_URL``.
``POST /v1/messages`` streams Server-Sent Events in the order the real API
uses: ``message_start``, ``content_block_start``, ``ping``, one
``content_block_delta`` per text chunk, ``content_block_stop``,
``message_delta`` (stop reason and usage), ``message_stop``; every answer
carries a ``request-id`` header. Non-streaming requests get a JSON message
and ``GET /v1/models`` a one-model list.

What each request gets is scripted with ``Reply`` values: queued with
``script()`` (first in, first out), else chosen by ``responder``, else a
default answer. The helpers below build the usual ones: an answer, a delay,
a stall mid-stream, 429 with or without ``retry-after``, the spend-limit
429, 529, 500, 401, 403, 400, an ``error`` event mid-stream, a dropped
connection, and ``max_tokens`` or ``refusal`` stops.

Every request is recorded (headers, JSON body, arrival time) and the server
counts requests in flight, the current number and the most seen at once.
Like the API under the SDK's default version, it rejects sampling
parameters such as ``temperature`` with a 400.

``latency_s`` (or ``FAKE_MESSAGES_LATENCY_S``) spreads every streamed
answer over that many seconds, for benchmarks that need a model with a fixed
latency. Run ``python -m tests.fakes.messages_server --port 8765`` to serve
from a process of its own.

This module does not implement tools, images, thinking or token counting.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackHTTPServer, LoopbackServer

LATENCY_ENV = "FAKE_MESSAGES_LATENCY_S"
DEFAULT_TEXT = "# Notes\n\n- The team agreed to ship on Friday.\n"
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Reply:
    """What the server does with one request.

    A ``status`` other than 200 answers with a JSON error body at once. A
    200 streams ``text`` in chunks of ``chunk_chars``; the ``*_after_chunks``
    fields act before the chunk with that index (0 is before any text,
    ``len(chunks)`` after the last one).
    """

    text: str = DEFAULT_TEXT
    status: int = 200
    error_type: str | None = None
    error_message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    stop_reason: str = "end_turn"
    chunk_chars: int = 16
    chunk_interval_s: float = 0.0
    stall_after_chunks: int | None = None
    stall_s: float = 0.0
    error_event_after_chunks: int | None = None
    drop_after_chunks: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


def answer(text: str = DEFAULT_TEXT, **kwargs: Any) -> Reply:
    return Reply(text=text, **kwargs)


def delayed(seconds: float, text: str = DEFAULT_TEXT) -> Reply:
    """Wait ``seconds`` before sending the status line."""
    return Reply(text=text, delay_s=seconds)


def stall(seconds: float, *, after_chunks: int = 1, text: str = DEFAULT_TEXT) -> Reply:
    """Send some text, then nothing for ``seconds``, then the rest."""
    return Reply(text=text, stall_after_chunks=after_chunks, stall_s=seconds)


def http_error(
    status: int,
    message: str = "",
    *,
    error_type: str | None = None,
    retry_after: str | float | None = None,
) -> Reply:
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    return Reply(
        status=status,
        error_type=error_type or ERROR_TYPES.get(status, "api_error"),
        error_message=message or f"fake error {status}",
        headers=headers,
    )


def rate_limited(retry_after: str | float | None = None) -> Reply:
    return http_error(
        429,
        "Number of request tokens has exceeded your rate limit.",
        retry_after=retry_after,
    )


def spend_limited() -> Reply:
    return http_error(
        429,
        "You have reached your specified API usage limits. "
        "You will regain access on 2031-01-01 at 00:00 UTC.",
    )


def credit_exhausted() -> Reply:
    return http_error(
        400,
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    )


def overloaded(retry_after: str | float | None = None) -> Reply:
    return http_error(529, "Overloaded", retry_after=retry_after)


def server_error() -> Reply:
    return http_error(500, "Internal server error")


def unauthorized() -> Reply:
    return http_error(401, "invalid x-api-key")


def forbidden() -> Reply:
    return http_error(403, "Your API key does not have permission to use this model.")


def bad_request(message: str = "max_tokens: must be at most 64000") -> Reply:
    return http_error(400, message)


def error_event(
    error_type: str = "overloaded_error",
    message: str = "Overloaded",
    *,
    after_chunks: int = 1,
    text: str = DEFAULT_TEXT,
) -> Reply:
    """Start streaming, then send an SSE ``error`` event and end the stream."""
    return Reply(
        text=text,
        error_type=error_type,
        error_message=message,
        error_event_after_chunks=after_chunks,
    )


def drop(*, after_chunks: int = 1, text: str = DEFAULT_TEXT) -> Reply:
    """Start streaming, then close the socket in the middle of the body."""
    return Reply(text=text, drop_after_chunks=after_chunks)


def truncated(text: str = DEFAULT_TEXT) -> Reply:
    return Reply(text=text, stop_reason="max_tokens")


def refusal(text: str = "") -> Reply:
    return Reply(text=text, stop_reason="refusal")


@dataclass
class RecordedRequest:
    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float  # time.monotonic() of this process
    # When the server stopped counting it in flight: just before the bytes
    # that let the client finish (see ``_settle``).
    finished_at: float | None = None
    status: int | None = None
    request_id: str = ""

    @property
    def user_text(self) -> str:
        """The text of every user message, joined."""
        texts: list[str] = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(b.get("text", "") for b in content if isinstance(b, dict))
        return "\n".join(texts)

    @property
    def system(self) -> str:
        system = (self.body or {}).get("system", "")
        if isinstance(system, list):
            return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
        return str(system)


Responder = Callable[[RecordedRequest], Reply]


class _ClientGone(Exception):  # noqa: N818 - a control-flow signal
    """The client closed the connection, or the server is stopping."""


class _HTTPServer(LoopbackHTTPServer):
    fake: FakeMessagesServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Each stream event is a small write of its own. With Nagle's algorithm
    # on, one written right after another waits for the client's ACK of the
    # first (40 ms of delayed ACK on Linux loopback), a delay no real API
    # adds; the HTTP servers in front of one set TCP_NODELAY.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._connection_opened(self.connection)

    def finish(self) -> None:
        self.server.fake._connection_closed(self.connection)
        with suppress(OSError):
            super().finish()

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        self.server.fake._handle(self)

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self.server.fake._handle(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None


class FakeMessagesServer(LoopbackServer):
    """The fake Messages API; ``start()`` returns its base URL.

    Usable as a context manager. ``reset()`` clears the script, the records
    and the in-flight maximum between tests that share one server.
    """

    handler = _Handler
    server_class = _HTTPServer
    thread_name = "fake-messages-server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float | None = None,
        require_api_key: str | None = None,
        reject_sampling_params: bool = True,
        responder: Responder | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        if latency_s is None:
            latency_s = float(os.environ.get(LATENCY_ENV, "0") or 0)
        self.latency_s = latency_s
        self.require_api_key = require_api_key
        self.reject_sampling_params = reject_sampling_params
        self.responder = responder
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()

    # -- lifecycle (see LoopbackServer) --------------------------------------

    def _on_start(self) -> None:
        self._stopping.clear()

    def _on_stop(self) -> None:
        # Handlers pausing between stream events give up at once.
        self._stopping.set()

    def _after_shutdown(self) -> None:
        # Streams still open end now, as when an API's connection drops.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- scripting and inspection ---------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._max_in_flight = self._in_flight
        self.responder = None

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every ``POST /v1/messages`` so far, oldest first."""
        with self._lock:
            return [r for r in self._requests if r.path.startswith("/v1/messages")]

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def wait_for_requests(
        self, count: int, timeout_s: float = 5.0
    ) -> list[RecordedRequest]:
        """Poll until ``count`` messages requests arrived; raise on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            requests = self.requests
            if len(requests) >= count:
                return requests
            if time.monotonic() > deadline:
                raise TimeoutError(f"saw {len(requests)} of {count} requests")
            time.sleep(0.01)

    # -- request handling ----------------------------------------------------

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _handle(self, handler: _Handler) -> None:
        record = self._record(handler)
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            self._dispatch(handler, record)
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            self._settle(record)

    def _settle(self, record: RecordedRequest) -> None:
        """Count ``record`` out of flight, once.

        Called before the last bytes of an answer go out: a client that has
        them may at once send its next request, and counting the old one
        until this thread got round to it would show two requests where the
        client never had more than one.
        """
        with self._lock:
            if record.finished_at is not None:
                return
            record.finished_at = time.monotonic()
            self._in_flight -= 1

    def _record(self, handler: _Handler) -> RecordedRequest:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            record = RecordedRequest(
                index=len(self._requests),
                method=handler.command,
                path=handler.path,
                headers={k.lower(): v for k, v in handler.headers.items()},
                body=body,
                received_at=time.monotonic(),
                request_id=f"req_fake_{uuid.uuid4().hex[:20]}",
            )
            self._requests.append(record)
        return record

    def _dispatch(self, handler: _Handler, record: RecordedRequest) -> None:
        path = record.path.split("?", 1)[0]
        if record.method == "GET" and path == "/v1/models":
            self._send_json(handler, record, 200, _models_list())
            return
        if record.method != "POST" or path != "/v1/messages":
            self._send_error(handler, record, http_error(404, f"no route {path}"))
            return
        rejection = self._validate(record)
        if rejection is not None:
            self._send_error(handler, record, rejection)
            return

        reply = self._next_reply(record)
        self._pause(handler, reply.delay_s)
        if reply.status != 200:
            self._send_error(handler, record, reply)
        elif record.body.get("stream"):
            self._stream(handler, record, reply)
        else:
            self._send_json(handler, record, 200, _message(record, reply))

    def _validate(self, record: RecordedRequest) -> Reply | None:
        if self.require_api_key is not None:
            bearer = record.headers.get("authorization", "")
            keys = {record.headers.get("x-api-key"), bearer.removeprefix("Bearer ")}
            if self.require_api_key not in keys:
                return unauthorized()
        body = record.body
        if not isinstance(body, dict):
            return bad_request("request body must be a JSON object")
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                return bad_request(f"{key}: Field required")
        if self.reject_sampling_params:
            for key in SAMPLING_PARAMS:
                if key in body:
                    return bad_request(
                        f"{key}: sampling parameters are not supported "
                        "in this API version"
                    )
        return None

    def _next_reply(self, record: RecordedRequest) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(record)
        return answer()

    # -- writing -------------------------------------------------------------

    def _send_json(
        self,
        handler: _Handler,
        record: RecordedRequest,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        record.status = status
        self._settle(record)
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.send_header("request-id", record.request_id)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    def _send_error(
        self, handler: _Handler, record: RecordedRequest, reply: Reply
    ) -> None:
        payload = {
            "type": "error",
            "error": {"type": reply.error_type, "message": reply.error_message},
            "request_id": record.request_id,
        }
        self._send_json(handler, record, reply.status, payload, reply.headers)

    def _stream(self, handler: _Handler, record: RecordedRequest, reply: Reply) -> None:
        chunks = list(_chunks(reply.text, reply.chunk_chars))
        interval_s = reply.chunk_interval_s + self.latency_s / max(1, len(chunks))
        input_tokens = reply.input_tokens or _input_tokens(record.body)
        output_tokens = reply.output_tokens or max(1, len(reply.text) // 4)
        record.status = 200
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream; charset=utf-8")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("transfer-encoding", "chunked")
        handler.send_header("request-id", record.request_id)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()

        self._event(handler, "message_start", _message_start(record, input_tokens))
        self._event(
            handler,
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        self._event(handler, "ping", {"type": "ping"})
        # Chunk times are kept on one schedule from here, so the answer takes
        # ``latency_s`` however late this thread gets to run (a busy machine,
        # the GIL): a remote API's pace does not depend on the client's CPU.
        due = time.monotonic()
        for index in range(len(chunks) + 1):
            if reply.drop_after_chunks == index:
                self._settle(record)
                with suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
                raise _ClientGone
            if reply.error_event_after_chunks == index:
                error = {"type": reply.error_type, "message": reply.error_message}
                self._settle(record)
                self._event(handler, "error", {"type": "error", "error": error})
                self._end_body(handler)
                return
            if reply.stall_after_chunks == index:
                self._pause(handler, reply.stall_s)
                due = time.monotonic()
            if index == len(chunks):
                break
            delta = {"type": "text_delta", "text": chunks[index]}
            self._event(
                handler,
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta},
            )
            due += interval_s
            self._pause_until(handler, due)
        self._event(
            handler, "content_block_stop", {"type": "content_block_stop", "index": 0}
        )
        self._event(
            handler,
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        self._settle(record)
        self._event(handler, "message_stop", {"type": "message_stop"})
        self._end_body(handler)

    def _event(self, handler: _Handler, name: str, data: dict[str, Any]) -> None:
        payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        handler.wfile.flush()

    def _end_body(self, handler: _Handler) -> None:
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def _pause(self, handler: _Handler, seconds: float) -> None:
        """Sleep, but give up early when the client hangs up or we stop."""
        self._pause_until(handler, time.monotonic() + seconds)

    def _pause_until(self, handler: _Handler, deadline: float) -> None:
        """``_pause`` until ``deadline`` (``time.monotonic()``), if not past."""
        conn = handler.connection
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stopping.is_set():
                raise _ClientGone
            readable, _, _ = select.select([conn], [], [], min(remaining, 0.05))
            if not readable:
                continue
            try:
                peeked = conn.recv(1, socket.MSG_PEEK)
            except OSError as exc:
                raise _ClientGone from exc
            if not peeked:
                raise _ClientGone
            # The client pipelined more bytes; they wait for the next request.
            time.sleep(min(remaining, 0.05))


def _chunks(text: str, size: int) -> Iterator[str]:
    size = max(1, size)
    for start in range(0, len(text), size):
        yield text[start : start + size]


def _input_tokens(body: dict[str, Any]) -> int:
    return max(1, len(json.dumps(body.get("messages", []), ensure_ascii=False)) // 4)


def _message_start(record: RecordedRequest, input_tokens: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": f"msg_fake_{record.index:06d}",
            "type": "message",
            "role": "assistant",
            "model": record.body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }


def _message(record: RecordedRequest, reply: Reply) -> dict[str, Any]:
    return {
        "id": f"msg_fake_{record.index:06d}",
        "type": "message",
        "role": "assistant",
        "model": record.body.get("model"),
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens or _input_tokens(record.body),
            "output_tokens": reply.output_tokens or max(1, len(reply.text) // 4),
        },
    }


def _models_list() -> dict[str, Any]:
    model = {
        "type": "model",
        "id": "claude-fake-1",
        "display_name": "Claude Fake",
        "created_at": "2025-01-01T00:00:00Z",
    }
    return {
        "data": [model],
        "has_more": False,
        "first_id": "claude-fake-1",
        "last_id": "claude-fake-1",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake Messages API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=None)
    args = parser.parse_args(argv)
    server = FakeMessagesServer(
        host=args.host, port=args.port, latency_s=args.latency_s
    )
    print(server.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
