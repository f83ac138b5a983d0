"""Feishu / Lark custom bot: an interactive card per final state.

The card has a green or red header with the same title as the WeCom
message, the task name, meeting time and note type in bold, for failures the
warning line and the error code in a grey note, and a button to the
artifact. With a signing secret the body carries ``timestamp`` and ``sign``:
Base64 of HMAC-SHA256 keyed with ``<timestamp>\\n<secret>`` over an empty
message, as Feishu verifies it.

The body's ``code`` decides (``StatusCode`` in older answers): 0 is
delivered; 11232 (sending too often) is retried; 19001 (no such bot), 19021
(bad signature or clock), 19022 (IP not allowed) and 19024 (keyword missing)
cannot pass on retry and mark the row dead. Other codes, HTTP errors and
timeouts are retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import SecretStr

from worker.channels.base import (
    Channel,
    DeliveryRefusedError,
    DeliveryRetryError,
    Notice,
    clip_reason,
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

# Feishu refuses webhook bodies above 20 KB; the signature fields take the rest.
MAX_BODY_BYTES = 20_000
SIGNATURE_BYTES = 128

OK = 0
REFUSED_CODES = {
    19001: "bot gone",
    19021: "signature refused",
    19022: "IP not allowed",
    19024: "keyword missing",
}


def sign(secret: str, timestamp: str) -> str:
    """Feishu's signature: the key is ``timestamp\\nsecret``, the message empty."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def card(notice: Notice, task_name: str) -> dict[str, Any]:
    """The interactive card for ``notice`` with ``task_name`` as given."""
    words = labels(notice.locale)
    sep = words["separator"]
    fields = "\n".join(
        (
            f"**{words['task_name']}**{sep}{task_name or notice.task_id}",
            f"**{words['meeting_time']}**{sep}{format_meeting_time(notice)}",
            f"**{words['note_type']}**{sep}{notice.note_type or notice.type_title}",
        )
    )
    elements: list[dict[str, Any]] = [
        {"tag": "div", "text": {"tag": "lark_md", "content": fields}}
    ]
    if not notice.succeeded:
        code = f"{words['error_code']}{sep}{notice.error_code or '-'}"
        problem = {"tag": "lark_md", "content": problem_line(notice)}
        elements.append({"tag": "div", "text": problem})
        # A note element renders grey, like WeCom's comment colour.
        note = {"tag": "plain_text", "content": code}
        elements.append({"tag": "note", "elements": [note]})
    if notice.link:
        button = {
            "tag": "button",
            "text": {"tag": "plain_text", "content": link_text(notice)},
            "type": "primary" if notice.succeeded else "default",
            "url": notice.link,
        }
        elements.append({"tag": "action", "actions": [button]})
    return {
        "config": {"wide_screen_mode": True},
        "header": {
            "template": "green" if notice.succeeded else "red",
            "title": {"tag": "plain_text", "content": title_line(notice)},
        },
        "elements": elements,
    }


class FeishuChannel(Channel):
    name = "feishu"

    def __init__(
        self,
        url: SecretStr,
        *,
        secret: SecretStr | None = None,
        timeout_s: float = 10.0,
        rate_per_minute: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(url, timeout_s=timeout_s, rate_per_minute=rate_per_minute)
        self._secret = secret
        self._clock = clock

    def render(self, notice: Notice) -> dict[str, Any]:
        def size_with(name: str) -> int:
            body = {"msg_type": "interactive", "card": card(notice, name)}
            return (
                len(json.dumps(body, ensure_ascii=False).encode("utf-8"))
                + SIGNATURE_BYTES
            )

        name = shorten_to_fit(one_line(notice.task_name), size_with, MAX_BODY_BYTES)
        body: dict[str, Any] = {"msg_type": "interactive", "card": card(notice, name)}
        if self._secret is not None:
            timestamp = str(int(self._clock()))
            body = {
                "timestamp": timestamp,
                "sign": sign(self._secret.get_secret_value(), timestamp),
                **body,
            }
        return body

    def read_answer(self, response: httpx.Response) -> None:
        answer = json_answer(response) or {}
        code = answer.get("code", answer.get("StatusCode"))
        if not isinstance(code, int):
            if response.is_success:
                raise DeliveryRetryError("unreadable answer (no code)")
            raise http_retry_error(response)
        if code == OK:
            return

        message = answer.get("msg", answer.get("StatusMessage", ""))
        reason = clip_reason(f"code {code}: {message}")
        if code in REFUSED_CODES:
            raise DeliveryRefusedError(f"{REFUSED_CODES[code]}: {reason}")
        # 11232 (sending too often) lands here, as does anything new.
        raise DeliveryRetryError(reason)
