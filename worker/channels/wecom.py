"""WeCom (企业微信) group robot: markdown messages and errcode answers.

The robot answers HTTP 200 even when it refuses, so the body's ``errcode``
decides: 0 is delivered; 45009 (over the robot's minute budget) and -1
(WeCom busy) are worth another try; 93000-93999 mean the robot was removed
or disabled, and other 40000-44999 codes reject the message itself, so
neither is retried. Codes not listed are retried until the notifier's
attempt cap. A message is at most ``MAX_CONTENT_BYTES`` of UTF-8; only the
task name gives way when a message is too long.
"""

from __future__ import annotations

from typing import Any

import httpx

from worker.channels.base import (
    Channel,
    DeliveryRefusedError,
    DeliveryRetryError,
    Notice,
    clip_reason,
    clip_utf8,
    format_meeting_time,
    http_retry_error,
    json_answer,
    labels,
    link_text,
    one_line,
    problem_line,
    shorten_to_fit,
    title_line,
)

MAX_CONTENT_BYTES = 4096

OK = 0
BUSY = -1
RATE_LIMITED = 45009
RETRY_CODES = frozenset({BUSY, RATE_LIMITED})

# WeCom's markdown knows three font colours: info is green, warning is
# orange-red, comment is grey.
GREEN, RED, GREY = "info", "warning", "comment"


def robot_gone(errcode: int) -> bool:
    """93000 and its family: the robot was removed, disabled or left the group."""
    return 93000 <= errcode <= 93999


def message_rejected(errcode: int) -> bool:
    """Codes that fault the request itself; the same message fails again."""
    return 40000 <= errcode <= 44999


def markdown(notice: Notice, task_name: str) -> str:
    """The markdown body for ``notice`` with ``task_name`` as given."""
    words = labels(notice.locale)
    colour = GREEN if notice.succeeded else RED
    sep = words["separator"]
    lines = [
        f'## <font color="{colour}">{title_line(notice)}</font>',
        f"> **{words['task_name']}**{sep}{task_name or notice.task_id}",
        f"> **{words['meeting_time']}**{sep}{format_meeting_time(notice)}",
        f"> **{words['note_type']}**{sep}{notice.note_type or notice.type_title}",
    ]
    if not notice.succeeded:
        lines.append("")
        lines.append(problem_line(notice))
        code = f"{words['error_code']}{sep}{notice.error_code or '-'}"
        lines.append(f'<font color="{GREY}">{code}</font>')
    if notice.link:
        lines.append("")
        lines.append(f"[{link_text(notice)}]({notice.link})")
    return "\n".join(lines)


def fitted_markdown(notice: Notice) -> str:
    """``markdown`` within ``MAX_CONTENT_BYTES``, shortening the task name first."""
    name = one_line(notice.task_name)
    name = shorten_to_fit(
        name, lambda n: len(markdown(notice, n).encode("utf-8")), MAX_CONTENT_BYTES
    )
    return clip_utf8(markdown(notice, name), MAX_CONTENT_BYTES)


class WeComChannel(Channel):
    name = "wecom"

    def render(self, notice: Notice) -> dict[str, Any]:
        return {"msgtype": "markdown", "markdown": {"content": fitted_markdown(notice)}}

    def read_answer(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise http_retry_error(response)
        answer = json_answer(response) or {}
        errcode = answer.get("errcode")
        if not isinstance(errcode, int):
            raise DeliveryRetryError("unreadable answer (no errcode)")
        if errcode == OK:
            return

        reason = clip_reason(f"errcode {errcode}: {answer.get('errmsg', '')}")
        if errcode in RETRY_CODES:
            raise DeliveryRetryError(reason)
        if robot_gone(errcode):
            raise DeliveryRefusedError(f"robot gone: {reason}")
        if message_rejected(errcode):
            raise DeliveryRefusedError(f"message rejected: {reason}")
        # A code not listed: retried until the attempt cap, in case it passes.
        raise DeliveryRetryError(reason)
