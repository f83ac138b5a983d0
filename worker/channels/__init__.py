"""Notification channels, chosen by settings: a channel is on when its URL is set.

``wecom`` (WeCom group robot), ``feishu`` (Feishu/Lark custom bot) and
``webhook`` (generic signed JSON) all sit behind ``Channel``. The chat
robots share ``ARTIFACTD_NOTIFY_RATE_PER_MINUTE`` per robot across the fleet;
the generic webhook has no such limit.
"""

from __future__ import annotations

from shared.settings import Settings
from worker.channels.base import (
    Channel,
    DeliveryError,
    DeliveryRefusedError,
    DeliveryRetryError,
    Notice,
)
from worker.channels.feishu import FeishuChannel
from worker.channels.webhook import WebhookChannel
from worker.channels.wecom import WeComChannel

__all__ = [
    "Channel",
    "DeliveryError",
    "DeliveryRefusedError",
    "DeliveryRetryError",
    "FeishuChannel",
    "Notice",
    "WeComChannel",
    "WebhookChannel",
    "build_channels",
    "configured_channel_names",
]


def configured_channel_names(settings: Settings) -> list[str]:
    """Names of the channels whose URL is set, in a fixed order."""
    return settings.notification_channels


def build_channels(settings: Settings) -> dict[str, Channel]:
    """One channel per configured URL, keyed by its outbox ``channel`` name."""
    channels: dict[str, Channel] = {}
    if settings.wecom_webhook_url is not None:
        channels["wecom"] = WeComChannel(
            settings.wecom_webhook_url,
            timeout_s=settings.notify_timeout_s,
            rate_per_minute=settings.notify_rate_per_minute,
        )
    if settings.feishu_webhook_url is not None:
        channels["feishu"] = FeishuChannel(
            settings.feishu_webhook_url,
            secret=settings.feishu_secret,
            timeout_s=settings.notify_timeout_s,
            rate_per_minute=settings.notify_rate_per_minute,
        )
    if settings.webhook_url is not None:
        channels["webhook"] = WebhookChannel(
            settings.webhook_url,
            secret=settings.webhook_secret,
            timeout_s=settings.notify_timeout_s,
        )
    return channels
