"""The channel seam: what a notification says, and how a channel answers.

A ``Notice`` holds everything a message may show about one final state. A
``Channel`` turns it into one HTTP request and reads the answer; channels
never touch the database, and the notifier decides what happens next. Every
failure a channel reports is one of::

    NotificationError                (shared.errors)
    └── DeliveryError                one delivery did not go through
        ├── DeliveryRetryError       may pass: rate limited, HTTP error, timeout
        └── DeliveryRefusedError     will not pass: robot gone, message rejected

httpx exceptions are translated here, in ``Channel.send``, and nowhere else.
Reasons never carry the webhook URL, which holds the robot's key.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from shared.errors import CATALOG, ErrorCode, NotificationError

ELLIPSIS = "…"
REASON_MAX_CHARS = 300


class DeliveryError(NotificationError):
    """One delivery did not go through; ``reason`` says why, without secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeliveryRetryError(DeliveryError):
    """Trouble that may pass; try again after a backoff."""

    def __init__(self, reason: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class DeliveryRefusedError(DeliveryError):
    """Trouble no retry can fix: the row is marked dead with the reason."""


@dataclass(frozen=True)
class Notice:
    """One final state, as a message shows it."""

    notification_id: int
    artifact_id: str
    event: Literal["success", "failed"]
    artifact_type: str
    type_title: str  # the artifact type's title, named in the message's title
    note_type: str  # the task's note type as shown (a type's title when it names one)
    task_id: str
    task_name: str | None
    meeting_time: datetime | None
    error_code: str | None
    link: str | None
    locale: str = "zh-CN"
    timezone: str = "UTC"

    @property
    def succeeded(self) -> bool:
        return self.event == "success"


# Message wording per locale. ``{title}`` is the artifact type's title.
LABELS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "success": "✓ {title}生成成功",
        "failed": "✗ {title}生成失败",
        "task_name": "任务名称",
        "meeting_time": "会议时间",
        "note_type": "笔记类型",
        "not_set": "未设置",
        "separator": "：",
        "problem": "⚠ 生成过程中遇到问题",
        "error_code": "错误码",
        "open": "查看{title}",
        "details": "查看详情",
    },
    "en": {
        "success": "✓ {title} generated",
        "failed": "✗ {title} generation failed",
        "task_name": "Task",
        "meeting_time": "Meeting time",
        "note_type": "Note type",
        "not_set": "not set",
        "separator": ": ",
        "problem": "⚠ Generation ran into a problem",
        "error_code": "Error code",
        "open": "Open {title}",
        "details": "View details",
    },
}


def labels(locale: str) -> dict[str, str]:
    return LABELS.get(locale, LABELS["en"])


def title_line(notice: Notice) -> str:
    """``✓ 会议纪要生成成功`` or ``✗ 会议纪要生成失败``, in the notice's locale."""
    return labels(notice.locale)[notice.event].format(title=notice.type_title)


def link_text(notice: Notice) -> str:
    words = labels(notice.locale)
    if notice.succeeded:
        return words["open"].format(title=notice.type_title)
    return words["details"]


def error_message(notice: Notice) -> str | None:
    """The catalog's message for the notice's error code, when it has one."""
    if notice.error_code is None:
        return None
    try:
        entry = CATALOG[ErrorCode(notice.error_code)]
    except ValueError:
        return None
    return entry.message.get(notice.locale, entry.message["en"])


def problem_line(notice: Notice) -> str:
    """The warning line of a failure, with the catalog's message when known."""
    words = labels(notice.locale)
    message = error_message(notice)
    return (
        f"{words['problem']}{words['separator']}{message}"
        if message
        else words["problem"]
    )


def format_meeting_time(notice: Notice) -> str:
    """``2026-12-03 14:00 UTC+08:00`` in the configured zone, or "not set"."""
    if notice.meeting_time is None:
        return labels(notice.locale)["not_set"]
    local = notice.meeting_time.astimezone(ZoneInfo(notice.timezone))
    offset = local.utcoffset()
    if not offset:
        zone = "UTC"
    else:
        minutes = int(offset.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        zone = f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{local:%Y-%m-%d %H:%M} {zone}"


def one_line(text: str | None) -> str:
    """Whitespace collapsed, so a task name cannot add lines to a message."""
    return " ".join((text or "").split())


def clip_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_bytes`` of UTF-8.

    Cuts on a character boundary: a character whose bytes would straddle
    the limit is left out whole.
    """
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max(max_bytes, 0)].decode("utf-8", "ignore")


def shorten_to_fit(name: str, size_with: Callable[[str], int], max_bytes: int) -> str:
    """``name``, or a prefix of it ending in "…", so ``size_with(name)`` fits.

    ``size_with`` measures the whole message built around a name. Only the
    name gives way; if the message does not fit even with an empty name,
    the empty name is returned and the caller clips what is left.
    """
    excess = size_with(name) - max_bytes
    if excess <= 0:
        return name
    keep = len(name.encode("utf-8")) - excess - len(ELLIPSIS.encode("utf-8"))
    while keep > 0:
        candidate = clip_utf8(name, keep) + ELLIPSIS
        over = size_with(candidate) - max_bytes
        if over <= 0:
            return candidate
        # Escaping inside the message can grow a name by more than its bytes.
        keep -= max(over, 1)
    return ""


def clip_reason(text: str) -> str:
    return one_line(text)[:REASON_MAX_CHARS]


class Channel(abc.ABC):
    """One destination for notifications, behind one webhook URL.

    ``name`` is what the outbox's ``channel`` column holds. A channel with
    ``rate_per_minute`` set shares that budget with every notifier in the
    fleet, keyed by ``rate_key``.
    """

    name: ClassVar[str]

    def __init__(
        self,
        url: SecretStr,
        *,
        timeout_s: float = 10.0,
        rate_per_minute: int | None = None,
    ) -> None:
        self._url = url
        self.timeout_s = timeout_s
        self.rate_per_minute = rate_per_minute

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} rate_key={self.rate_key}>"

    @property
    def rate_key(self) -> str:
        """A stable name for the robot behind the URL that does not reveal it."""
        digest = hashlib.sha256(self._url.get_secret_value().encode("utf-8"))
        return f"{self.name}:{digest.hexdigest()[:20]}"

    @abc.abstractmethod
    def render(self, notice: Notice) -> dict[str, Any]:
        """The JSON body for ``notice``."""

    def request_headers(self, notice: Notice, body: bytes) -> dict[str, str]:
        """Headers beyond the content type; signatures go here."""
        return {}

    @abc.abstractmethod
    def read_answer(self, response: httpx.Response) -> None:
        """Return if the message was accepted; raise a ``DeliveryError`` if not."""

    def encode(self, notice: Notice) -> bytes:
        return json.dumps(self.render(notice), ensure_ascii=False).encode("utf-8")

    async def send(self, notice: Notice, client: httpx.AsyncClient) -> None:
        """Deliver ``notice``; a failure raises one of the ``DeliveryError``s."""
        body = self.encode(notice)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        headers.update(self.request_headers(notice, body))
        try:
            response = await client.post(
                self._url.get_secret_value(),
                content=body,
                headers=headers,
                timeout=self.timeout_s,
            )
        except httpx.TimeoutException as exc:
            raise DeliveryRetryError(f"timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise DeliveryRetryError(
                self._scrub(f"{type(exc).__name__}: {exc}")
            ) from None
        self.read_answer(response)

    def _scrub(self, text: str) -> str:
        return clip_reason(text.replace(self._url.get_secret_value(), "<webhook>"))


def http_retry_error(response: httpx.Response) -> DeliveryRetryError:
    """A retry for an HTTP status that is not a success, honouring Retry-After."""
    return DeliveryRetryError(
        f"HTTP {response.status_code}", retry_after_s=retry_after_s(response)
    )


def retry_after_s(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


def json_answer(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's JSON object, or None when it is not one."""
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
