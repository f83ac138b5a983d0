"""Notification channels: what each message says, and how each answer is read.

No database. Rendering is checked on the JSON a channel builds; answers are
checked by sending through the real httpx client to the fake robot server on
loopback, which answers as WeCom, Feishu or a plain webhook would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.errors import ConfigurationError
from shared.settings import load_settings
from tests.fakes.robot_server import (
    FakeRobotServer,
    delayed,
    dropped,
    errcode,
    feishu_code,
    http_status,
)
from worker.channels import (
    Channel,
    DeliveryRefusedError,
    DeliveryRetryError,
    FeishuChannel,
    Notice,
    WebhookChannel,
    WeComChannel,
    build_channels,
)
from worker.channels.base import clip_utf8
from worker.channels.wecom import MAX_CONTENT_BYTES, fitted_markdown

MEETING = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)
LINK = "https://notes.example.com/artifacts/0b7c6c2e-1111-4222-8333-944455556666"


def notice(**overrides: Any) -> Notice:
    values: dict[str, Any] = {
        "notification_id": 41,
        "artifact_id": "0b7c6c2e-1111-4222-8333-944455556666",
        "event": "success",
        "artifact_type": "meeting_minutes",
        "type_title": "会议纪要",
        "note_type": "会议纪要",
        "task_id": "task-1",
        "task_name": "产品周会",
        "meeting_time": MEETING,
        "error_code": None,
        "link": LINK,
        "locale": "zh-CN",
        "timezone": "Asia/Shanghai",
    }
    values.update(overrides)
    return Notice(**values)


@pytest.fixture(scope="module")
def robots() -> Any:
    with FakeRobotServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(robots: FakeRobotServer) -> None:
    robots.reset()


def send(channel: Channel, sent: Notice, *, timeout_s: float = 5.0) -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as client:
            await channel.send(sent, client)

    channel.timeout_s = timeout_s
    asyncio.run(go())


# -- WeCom markdown -------------------------------------------------------------


def test_wecom_success__green_title_bold_fields_and_link() -> None:
    content = WeComChannel(SecretStr("http://x")).render(notice())["markdown"][
        "content"
    ]

    lines = content.splitlines()
    assert lines[0] == '## <font color="info">✓ 会议纪要生成成功</font>'
    assert "> **任务名称**：产品周会" in lines
    assert "> **会议时间**：2026-12-03 14:00 UTC+08:00" in lines
    assert "> **笔记类型**：会议纪要" in lines
    assert f"[查看会议纪要]({LINK})" in lines
    assert 'color="warning"' not in content


def test_wecom_failure__red_title_warning_line_and_grey_code() -> None:
    failed = notice(event="failed", error_code="LLM_TIMEOUT")

    content = WeComChannel(SecretStr("http://x")).render(failed)["markdown"]["content"]

    lines = content.splitlines()
    assert lines[0] == '## <font color="warning">✗ 会议纪要生成失败</font>'
    assert "⚠ 生成过程中遇到问题：调用大模型超时。" in lines
    assert '<font color="comment">错误码：LLM_TIMEOUT</font>' in lines
    assert "> **任务名称**：产品周会" in lines
    assert f"[查看详情]({LINK})" in lines


def test_wecom_english__same_shape_in_english() -> None:
    sent = notice(
        locale="en",
        type_title="Meeting minutes",
        note_type="Meeting minutes",
        event="failed",
        error_code="INPUT_EMPTY",
        timezone="UTC",
    )

    content = WeComChannel(SecretStr("http://x")).render(sent)["markdown"]["content"]

    assert content.startswith(
        '## <font color="warning">✗ Meeting minutes generation failed</font>'
    )
    assert "> **Task**: 产品周会" in content
    assert "> **Meeting time**: 2026-12-03 06:00 UTC" in content
    assert "⚠ Generation ran into a problem: The transcript is empty." in content
    assert '<font color="comment">Error code: INPUT_EMPTY</font>' in content


def test_wecom_message__without_meeting_time_or_link_says_not_set() -> None:
    content = fitted_markdown(notice(meeting_time=None, link=None))

    assert "> **会议时间**：未设置" in content
    assert "](" not in content


def test_wecom_message__task_name_cannot_add_lines() -> None:
    content = fitted_markdown(notice(task_name="周会\n## 伪造标题\r\n第二行"))

    assert "> **任务名称**：周会 ## 伪造标题 第二行" in content.splitlines()


def test_wecom_message__long_chinese_name_fits_4096_bytes_keeping_the_rest() -> None:
    name = "超长的季度战略规划与跨部门协作复盘会议" * 400

    content = fitted_markdown(notice(task_name=name))

    assert len(content.encode("utf-8")) <= MAX_CONTENT_BYTES
    line = next(x for x in content.splitlines() if x.startswith("> **任务名称**"))
    shown = line.removeprefix("> **任务名称**：")
    assert shown.endswith("…") and name.startswith(shown[:-1])
    assert len(shown) > 1000  # shortened only as far as needed
    assert "> **会议时间**：2026-12-03 14:00 UTC+08:00" in content
    assert content.rstrip().endswith(f"({LINK})")


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=0, max_size=3000), st.sampled_from(["success", "failed"]))
def test_wecom_message__any_name_fits_and_is_a_prefix(name: str, event: str) -> None:
    sent = notice(task_name=name, event=event, error_code="OUTPUT_INVALID")

    content = fitted_markdown(sent)

    encoded = content.encode("utf-8")
    assert len(encoded) <= MAX_CONTENT_BYTES
    assert encoded.decode("utf-8") == content
    assert content.rstrip().endswith(f"({LINK})")


def test_clip_utf8__cuts_on_a_character_boundary() -> None:
    text = "会议🙂纪要"  # 3 + 3 + 4 + 3 + 3 bytes

    assert clip_utf8(text, 5) == "会"
    assert clip_utf8(text, 6) == "会议"
    assert clip_utf8(text, 9) == "会议"
    assert clip_utf8(text, 10) == "会议🙂"
    assert clip_utf8(text, 100) == text
    assert clip_utf8(text, 0) == ""


# -- WeCom answers --------------------------------------------------------------


def test_wecom_answer__errcode_0_is_delivered(robots: FakeRobotServer) -> None:
    channel = WeComChannel(SecretStr(robots.wecom_url("k1")))

    send(channel, notice())

    [message] = robots.messages
    assert message.accepted
    assert message.body["msgtype"] == "markdown"
    assert message.content.startswith('## <font color="info">✓ 会议纪要生成成功')


@pytest.mark.parametrize("code", [45009, -1])
def test_wecom_answer__rate_limited_or_busy_is_retried(
    robots: FakeRobotServer, code: int
) -> None:
    robots.script(errcode(code))

    with pytest.raises(DeliveryRetryError) as caught:
        send(WeComChannel(SecretStr(robots.wecom_url())), notice())

    assert f"errcode {code}" in caught.value.reason


def test_wecom_answer__removed_robot_is_refused_with_the_reason(
    robots: FakeRobotServer,
) -> None:
    robots.remove_robot("gone-key")

    with pytest.raises(DeliveryRefusedError) as caught:
        send(WeComChannel(SecretStr(robots.wecom_url("gone-key"))), notice())

    assert caught.value.reason.startswith("robot gone: errcode 93000")
    assert "gone-key" not in caught.value.reason


def test_wecom_answer__rejected_message_is_refused(robots: FakeRobotServer) -> None:
    robots.script(errcode(40058, "markdown.content exceed max length"))

    with pytest.raises(DeliveryRefusedError, match="message rejected: errcode 40058"):
        send(WeComChannel(SecretStr(robots.wecom_url())), notice())


def test_wecom_answer__http_error_is_retried_honouring_retry_after(
    robots: FakeRobotServer,
) -> None:
    robots.script(http_status(503, retry_after=7))

    with pytest.raises(DeliveryRetryError) as caught:
        send(WeComChannel(SecretStr(robots.wecom_url())), notice())

    assert caught.value.reason == "HTTP 503"
    assert caught.value.retry_after_s == 7.0


def test_wecom_answer__timeout_is_retried(robots: FakeRobotServer) -> None:
    robots.script(delayed(1.0))

    with pytest.raises(DeliveryRetryError, match="timed out"):
        send(WeComChannel(SecretStr(robots.wecom_url())), notice(), timeout_s=0.2)


def test_wecom_answer__dropped_connection_is_retried_without_the_url(
    robots: FakeRobotServer,
) -> None:
    robots.script(dropped())
    url = robots.wecom_url("secret-robot-key")

    with pytest.raises(DeliveryRetryError) as caught:
        send(WeComChannel(SecretStr(url)), notice())

    assert "secret-robot-key" not in caught.value.reason


def test_wecom_answer__refused_connection_is_retried() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = WeComChannel(
        SecretStr(f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key=k")
    )

    with pytest.raises(DeliveryRetryError, match="ConnectError"):
        send(channel, notice())


def test_channel_repr__never_shows_the_url() -> None:
    channel = WeComChannel(
        SecretStr("https://qyapi.weixin.qq.com/send?key=very-secret")
    )

    assert "very-secret" not in repr(channel)
    assert "very-secret" not in channel.rate_key
    assert channel.rate_key.startswith("wecom:")


# -- generic webhook --------------------------------------------------------------


def test_webhook__signed_body_verifies_with_the_secret(robots: FakeRobotServer) -> None:
    channel = WebhookChannel(
        SecretStr(robots.webhook_url()),
        secret=SecretStr("s3cret"),
        clock=lambda: 1_800_000_000,
    )

    send(channel, notice(event="failed", error_code="LLM_AUTH_FAILED"))

    [message] = robots.messages
    assert message.headers["x-artifactd-timestamp"] == "1800000000"
    expected = hmac.new(
        b"s3cret", b"1800000000." + message.raw, hashlib.sha256
    ).hexdigest()
    assert message.headers["x-artifactd-signature"] == f"sha256={expected}"
    assert message.headers["x-artifactd-delivery"] == "41"
    assert message.headers["x-artifactd-event"] == "failed"
    body = json.loads(message.raw)
    assert body["event"] == "failed"
    assert body["error_code"] == "LLM_AUTH_FAILED"
    assert body["task"] == {
        "id": "task-1",
        "name": "产品周会",
        "meeting_time": MEETING.isoformat(),
    }
    assert body["title"] == "✗ 会议纪要生成失败"
    assert body["link"] == LINK


def test_webhook__unsigned_without_a_secret(robots: FakeRobotServer) -> None:
    send(WebhookChannel(SecretStr(robots.webhook_url())), notice())

    [message] = robots.messages
    assert "x-artifactd-signature" not in message.headers
    assert json.loads(message.raw)["error_code"] is None


def test_webhook__410_is_refused_and_500_retried(robots: FakeRobotServer) -> None:
    channel = WebhookChannel(SecretStr(robots.webhook_url()))
    robots.script(http_status(410), http_status(500))

    with pytest.raises(DeliveryRefusedError, match="410"):
        send(channel, notice())
    with pytest.raises(DeliveryRetryError, match="HTTP 500"):
        send(channel, notice())


# -- Feishu / Lark ----------------------------------------------------------------


def test_feishu__signed_card_is_accepted(robots: FakeRobotServer) -> None:
    robots.feishu_secrets["bot-a"] = "feishu-secret"
    channel = FeishuChannel(
        SecretStr(robots.feishu_url("bot-a")), secret=SecretStr("feishu-secret")
    )

    send(channel, notice(event="failed", error_code="WORKER_LOST"))

    [message] = robots.messages
    assert message.accepted
    card = message.body["card"]
    assert card["header"]["template"] == "red"
    assert card["header"]["title"]["content"] == "✗ 会议纪要生成失败"
    assert "**任务名称**：产品周会" in message.content
    assert "错误码：WORKER_LOST" in message.content
    assert LINK in message.content


def test_feishu__wrong_secret_is_refused(robots: FakeRobotServer) -> None:
    robots.feishu_secrets["bot-b"] = "the-real-secret"
    channel = FeishuChannel(
        SecretStr(robots.feishu_url("bot-b")), secret=SecretStr("stale")
    )

    with pytest.raises(DeliveryRefusedError, match="signature refused: code 19021"):
        send(channel, notice())


def test_feishu__frequency_limit_is_retried(robots: FakeRobotServer) -> None:
    robots.script(feishu_code(11232, "frequency limited"))

    with pytest.raises(DeliveryRetryError, match="code 11232"):
        send(FeishuChannel(SecretStr(robots.feishu_url())), notice())


def test_feishu__success_card_is_green(robots: FakeRobotServer) -> None:
    send(FeishuChannel(SecretStr(robots.feishu_url())), notice())

    [message] = robots.messages
    assert message.body["card"]["header"]["template"] == "green"
    assert "sign" not in message.body


# -- selection by settings ----------------------------------------------------------


def test_build_channels__one_per_configured_url() -> None:
    chosen = load_settings(
        wecom_webhook_url="http://127.0.0.1:1/cgi-bin/webhook/send?key=a",
        webhook_url="http://127.0.0.1:1/hooks/x",
        feishu_webhook_url="",
        notify_rate_per_minute=7,
    )

    channels = build_channels(chosen)

    assert list(channels) == ["wecom", "webhook"]
    assert channels["wecom"].rate_per_minute == 7
    assert channels["webhook"].rate_per_minute is None


def test_settings__bad_webhook_url_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="ARTIFACTD_WECOM_WEBHOOK_URL"):
        load_settings(wecom_webhook_url="qyapi.weixin.qq.com/send?key=a")
    with pytest.raises(ConfigurationError, match="ARTIFACTD_TIMEZONE"):
        load_settings(timezone="Mars/Olympus")
