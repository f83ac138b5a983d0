"""A generic JSON webhook: one POST per final state, signed when a secret is set.

The body is a JSON object (see ``payload``). Every request carries
``X-Artifactd-Event`` and ``X-Artifactd-Delivery`` (the outbox row's id, the
same on every retry, so a receiver can drop repeats). With a secret it also
carries ``X-Artifactd-Timestamp`` (Unix seconds) and
``X-Artifactd-Signature: sha256=<hex>``, the HMAC-SHA256 under the secret of
``<timestamp>.<body bytes>``; a receiver recomputes it over the raw body and
rejects old timestamps to stop replays.

Any 2xx is delivered; 410 Gone means the endpoint was retired (dead); every
other status, a timeout or a refused connection is retried.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import SecretStr

from worker.channels.base import (
    Channel,
    DeliveryRefusedError,
    Notice,
    error_message,
    http_retry_error,
    title_line,
)

SIGNATURE_HEADER = "X-Artifactd-Signature"
TIMESTAMP_HEADER = "X-Artifactd-Timestamp"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``<timestamp>.<body>``, as receivers recompute it."""
    mac = hmac.new(
        secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256
    )
    return "sha256=" + mac.hexdigest()


def payload(notice: Notice) -> dict[str, Any]:
    """The JSON object a receiver gets."""
    return {
        "delivery_id": notice.notification_id,
        "event": notice.event,
        "title": title_line(notice),
        "artifact_id": notice.artifact_id,
        "artifact_type": notice.artifact_type,
        "artifact_title": notice.type_title,
        "note_type": notice.note_type or notice.type_title,
        "task": {
            "id": notice.task_id,
            "name": notice.task_name,
            "meeting_time": notice.meeting_time.isoformat()
            if notice.meeting_time
            else None,
        },
        "error_code": None if notice.succeeded else notice.error_code,
        "error_message": None if notice.succeeded else error_message(notice),
        "link": notice.link,
        "locale": notice.locale,
    }


class WebhookChannel(Channel):
    name = "webhook"

    def __init__(
        self,
        url: SecretStr,
        *,
        secret: SecretStr | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(url, timeout_s=timeout_s, rate_per_minute=None)
        self._secret = secret
        self._clock = clock

    def render(self, notice: Notice) -> dict[str, Any]:
        return payload(notice)

    def request_headers(self, notice: Notice, body: bytes) -> dict[str, str]:
        headers = {
            "X-Artifactd-Event": notice.event,
            "X-Artifactd-Delivery": str(notice.notification_id),
        }
        if self._secret is not None:
            timestamp = str(int(self._clock()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(
                self._secret.get_secret_value(), timestamp, body
            )
        return headers

    def read_answer(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        if response.status_code == 410:
            raise DeliveryRefusedError("endpoint gone (HTTP 410)")
        raise http_retry_error(response)
