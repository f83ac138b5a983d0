"""A fake chat-robot webhook server on loopback: WeCom, Feishu/Lark, generic.

``FakeRobotServer`` is a real HTTP/1.1 server (the standard library's
threading server in a background thread), so notifiers in other processes
reach it through the webhook URLs it hands out:

- ``wecom_url(key)``: ``POST /cgi-bin/webhook/send?key=…``, answered like a
  WeCom group robot: HTTP 200 with ``{"errcode", "errmsg"}``. As the real
  robot does, it refuses markdown content over 4096 bytes of UTF-8 (errcode
  40058), keys passed to ``remove_robot`` get 93000 every time, and with
  ``rate_per_minute`` set a key over its budget in the last 60 s gets 45009.
- ``feishu_url(token)``: ``POST /open-apis/bot/v2/hook/…``, answered with
  ``{"code", "msg"}``; with ``feishu_secrets[token]`` set it checks the
  body's ``timestamp`` and ``sign`` (19021 when they do not match).
- ``webhook_url(name)``: ``POST /hooks/…``, answered 200 ``{"ok": true}``.

What a request gets can be scripted with ``Reply`` values, first in first
out, per robot (``script(key=…)``) or for any robot: an errcode or code, an
HTTP status with or without ``Retry-After``, a delay, or a dropped
connection. Every request is recorded with its headers, raw body, parsed
JSON, the answer it got and its arrival time (``time.monotonic()``).

It sends nothing anywhere and keeps nothing on disk.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import defaultdict, deque
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import LoopbackHTTPServer, LoopbackServer

WECOM_PATH = "/cgi-bin/webhook/send"
FEISHU_PREFIX = "/open-apis/bot/v2/hook/"
WEBHOOK_PREFIX = "/hooks/"
WECOM_MAX_CONTENT_BYTES = 4096
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Reply:
    """What the server answers one request.

    ``body`` None means the flavour's success answer. ``drop`` closes the
    connection without answering.
    """

    status: int = 200
    body: Any = None
    delay_s: float = 0.0
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def ok() -> Reply:
    return Reply()


def errcode(code: int, message: str = "") -> Reply:
    """A WeCom answer: HTTP 200 with this errcode."""
    return Reply(body={"errcode": code, "errmsg": message or f"fake errcode {code}"})


def feishu_code(code: int, message: str = "") -> Reply:
    """A Feishu answer with this code (HTTP 200, as Feishu answers most errors)."""
    return Reply(body={"code": code, "msg": message or f"fake code {code}", "data": {}})


def http_status(status: int, *, retry_after: float | None = None) -> Reply:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Reply(status=status, body={"error": f"fake HTTP {status}"}, headers=headers)


def delayed(seconds: float, reply: Reply | None = None) -> Reply:
    base = reply or ok()
    return Reply(base.status, base.body, seconds, base.drop, base.headers)


def dropped() -> Reply:
    return Reply(drop=True)


@dataclass
class RecordedMessage:
    index: int
    flavour: str  # "wecom", "feishu" or "webhook"
    robot: str  # the WeCom key, the Feishu token or the webhook name
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    received_at: float
    answer: Any = None
    status: int | None = None

    @property
    def content(self) -> str:
        """The text a reader sees: WeCom markdown, or the Feishu card's text."""
        body = self.body if isinstance(self.body, dict) else {}
        if self.flavour == "wecom":
            return str((body.get("markdown") or {}).get("content", ""))
        if self.flavour == "feishu":
            return "\n".join(_card_texts(body.get("card") or {}))
        return json.dumps(body, ensure_ascii=False)

    @property
    def accepted(self) -> bool:
        """Whether the answer meant "delivered"."""
        if self.status != 200 or not isinstance(self.answer, dict):
            return False
        if self.flavour == "wecom":
            return self.answer.get("errcode") == 0
        if self.flavour == "feishu":
            return self.answer.get("code") == 0
        return True


def _card_texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        texts = [node["content"]] if isinstance(node.get("content"), str) else []
        if isinstance(node.get("url"), str):
            texts.append(node["url"])
        for key, value in node.items():
            if key not in ("content", "url"):
                texts.extend(_card_texts(value))
        return texts
    if isinstance(node, list):
        return [text for item in node for text in _card_texts(item)]
    return []


class _HTTPServer(LoopbackHTTPServer):
    fake: FakeRobotServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle's algorithm
    # and the client's delayed ACK add ~40 ms to every other answer.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        self.server.fake._handle(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None


class FakeRobotServer(LoopbackServer):
    """The fake robots; ``start()`` returns the base URL. A context manager."""

    handler = _Handler
    server_class = _HTTPServer
    thread_name = "fake-robot-server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_per_minute: int | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.rate_per_minute = rate_per_minute
        self.feishu_secrets: dict[str, str] = {}
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._removed: set[str] = set()
        self._messages: list[RecordedMessage] = []

    def wecom_url(self, key: str = "robot-key") -> str:
        return f"{self.base_url}{WECOM_PATH}?key={key}"

    def feishu_url(self, token: str = "bot-token") -> str:
        return f"{self.base_url}{FEISHU_PREFIX}{token}"

    def webhook_url(self, name: str = "artifactd") -> str:
        return f"{self.base_url}{WEBHOOK_PREFIX}{name}"

    # -- scripting and inspection -----------------------------------------------

    def script(self, *replies: Reply, robot: str | None = None) -> None:
        """Queue replies for the next requests (to ``robot`` only, when given)."""
        with self._lock:
            (self._scripts[robot] if robot is not None else self._script).extend(
                replies
            )

    def remove_robot(self, robot: str) -> None:
        """This WeCom key answers 93000 from now on, like a robot removed."""
        with self._lock:
            self._removed.add(robot)

    @property
    def messages(self) -> list[RecordedMessage]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._messages)

    def accepted(self, robot: str | None = None) -> list[RecordedMessage]:
        """Requests whose answer meant "delivered" (to ``robot``, when given)."""
        return [
            m
            for m in self.messages
            if m.accepted and (robot is None or m.robot == robot)
        ]

    def wait_for(self, count: int, *, timeout_s: float = 10.0) -> list[RecordedMessage]:
        """Poll until ``count`` requests arrived; raise on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.messages
            if len(messages) >= count:
                return messages
            if time.monotonic() > deadline:
                raise TimeoutError(f"saw {len(messages)} of {count} robot requests")
            time.sleep(0.01)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._scripts.clear()
            self._removed.clear()
            self._messages.clear()

    # -- handling ------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        parts = urlsplit(handler.path)
        flavour, robot = _route(parts.path, parts.query)
        with self._lock:
            record = RecordedMessage(
                index=len(self._messages),
                flavour=flavour,
                robot=robot,
                path=parts.path,
                headers={k.lower(): v for k, v in handler.headers.items()},
                raw=raw,
                body=body,
                received_at=time.monotonic(),
            )
            self._messages.append(record)
            scripted = self._scripts.get(robot)
            if scripted:
                reply: Reply | None = scripted.popleft()
            elif self._script:
                reply = self._script.popleft()
            else:
                reply = None
        if reply is None:
            reply = self._default_reply(record)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.drop:
            handler.close_connection = True
            with suppress(OSError):
                handler.connection.shutdown(2)
            return
        answer = reply.body if reply.body is not None else _success(flavour)
        record.answer, record.status = answer, reply.status
        data = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        handler.send_response(reply.status)
        handler.send_header("content-type", "application/json; charset=utf-8")
        handler.send_header("content-length", str(len(data)))
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        with suppress(OSError):
            handler.wfile.write(data)
            handler.wfile.flush()

    def _default_reply(self, record: RecordedMessage) -> Reply:
        """What the real service would say to this request, unscripted."""
        if record.flavour == "none":
            return http_status(404)
        body = record.body
        if not isinstance(body, dict):
            if record.flavour == "wecom":
                return errcode(40035, "invalid json")
            if record.flavour == "feishu":
                return feishu_code(9499, "Bad Request")
            return http_status(400)
        if record.flavour == "wecom":
            return self._wecom_reply(record, body)
        if record.flavour == "feishu":
            return self._feishu_reply(record, body)
        return ok()

    def _wecom_reply(self, record: RecordedMessage, body: dict[str, Any]) -> Reply:
        with self._lock:
            removed = record.robot in self._removed
        if removed:
            return errcode(93000, "invalid webhook url")
        if body.get("msgtype") != "markdown":
            return errcode(40008, "invalid message type")
        content = (body.get("markdown") or {}).get("content", "")
        if len(content.encode("utf-8")) > WECOM_MAX_CONTENT_BYTES:
            return errcode(40058, "markdown.content exceed max length 4096")
        if self.rate_per_minute is not None and self._over_rate(record):
            return errcode(45009, "api freq out of limit")
        return ok()

    def _feishu_reply(self, record: RecordedMessage, body: dict[str, Any]) -> Reply:
        secret = self.feishu_secrets.get(record.robot)
        if secret is not None:
            timestamp = str(body.get("timestamp", ""))
            key = f"{timestamp}\n{secret}".encode()
            expected = base64.b64encode(
                hmac.new(key, b"", hashlib.sha256).digest()
            ).decode()
            if not hmac.compare_digest(expected, str(body.get("sign", ""))):
                return feishu_code(
                    19021, "sign match fail or timestamp is not within one hour"
                )
        if body.get("msg_type") not in (
            "text",
            "post",
            "interactive",
            "image",
            "share_chat",
        ):
            return feishu_code(19002, "params error, msg_type need")
        return ok()

    def _over_rate(self, record: RecordedMessage) -> bool:
        with self._lock:
            recent = [
                m
                for m in self._messages
                if m.robot == record.robot
                and m is not record
                and m.accepted
                and record.received_at - m.received_at < RATE_WINDOW_S
            ]
        assert self.rate_per_minute is not None
        return len(recent) >= self.rate_per_minute


def _route(path: str, query: str) -> tuple[str, str]:
    if path == WECOM_PATH:
        return "wecom", (parse_qs(query).get("key") or [""])[0]
    if path.startswith(FEISHU_PREFIX):
        return "feishu", path.removeprefix(FEISHU_PREFIX)
    if path.startswith(WEBHOOK_PREFIX):
        return "webhook", path.removeprefix(WEBHOOK_PREFIX)
    return "none", ""


def _success(flavour: str) -> dict[str, Any]:
    if flavour == "wecom":
        return {"errcode": 0, "errmsg": "ok"}
    if flavour == "feishu":
        return {"code": 0, "msg": "success", "data": {}}
    return {"ok": True}
