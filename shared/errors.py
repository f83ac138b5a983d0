"""Error codes, their catalog of messages, and the exception tree.

Every failure that reaches an artifact row is one of the codes in
``ErrorCode``; its message and hint come from ``CATALOG`` in the configured
locale. The exception tree::

    ArtifactdError                      root of everything raised on purpose
    ├── ConfigurationError              a setting is missing or malformed (exit 2)
    ├── DatabaseError                   PostgreSQL is unreachable or misbehaves (exit 3)
    │   └── SchemaOutOfDateError        the schema is behind the code
    ├── InputError                      a transcript file or request is unusable
    │   └── TranscriptError             names the file and the reason
    ├── NotificationError               a channel refused or failed a delivery
    └── JobError                        one artifact's attempt ended badly
        ├── RetryableJobError           try again later (codes marked retryable)
        └── PermanentJobError           fail the artifact now

Outcomes that are not failures are their own types: ``LeaseLost`` (another
worker or an operator took the row) and ``Cancelled``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    LLM_TIMEOUT = "LLM_TIMEOUT"
    LLM_RATE_LIMITED = "LLM_RATE_LIMITED"
    LLM_OVERLOADED = "LLM_OVERLOADED"
    LLM_UNAVAILABLE = "LLM_UNAVAILABLE"
    LLM_STREAM_STALLED = "LLM_STREAM_STALLED"
    LLM_AUTH_FAILED = "LLM_AUTH_FAILED"
    LLM_SPEND_LIMIT = "LLM_SPEND_LIMIT"
    LLM_BAD_REQUEST = "LLM_BAD_REQUEST"
    INPUT_NOT_FOUND = "INPUT_NOT_FOUND"
    INPUT_EMPTY = "INPUT_EMPTY"
    INPUT_TOO_LONG = "INPUT_TOO_LONG"
    OUTPUT_TRUNCATED = "OUTPUT_TRUNCATED"
    OUTPUT_REFUSED = "OUTPUT_REFUSED"
    OUTPUT_INVALID = "OUTPUT_INVALID"
    UNKNOWN_ARTIFACT_TYPE = "UNKNOWN_ARTIFACT_TYPE"
    WORKER_LOST = "WORKER_LOST"
    CANCELLED = "CANCELLED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True)
class CatalogEntry:
    retryable: bool
    message: dict[str, str]
    hint: dict[str, str]


def _entry(
    retryable: bool, zh: str, en: str, zh_hint: str, en_hint: str
) -> CatalogEntry:
    return CatalogEntry(
        retryable=retryable,
        message={"zh-CN": zh, "en": en},
        hint={"zh-CN": zh_hint, "en": en_hint},
    )


CATALOG: dict[ErrorCode, CatalogEntry] = {
    ErrorCode.LLM_TIMEOUT: _entry(
        True,
        "调用大模型超时。",
        "The language model did not answer in time.",
        "稍后会自动重试；若持续出现，请调大 ARTIFACTD_REQUEST_TIMEOUT_S。",
        "It is retried automatically; if it persists, raise ARTIFACTD_REQUEST_TIMEOUT_S.",
    ),
    ErrorCode.LLM_RATE_LIMITED: _entry(
        True,
        "大模型接口限流（429）。",
        "The language model API is rate limiting us (429).",
        "整个集群会暂停领取任务直到限流解除，然后自动重试。",
        "The whole fleet pauses claims until the limit lifts, then retries.",
    ),
    ErrorCode.LLM_OVERLOADED: _entry(
        True,
        "大模型服务过载（529）。",
        "The language model API is overloaded (529).",
        "稍后会自动重试。",
        "It is retried automatically later.",
    ),
    ErrorCode.LLM_UNAVAILABLE: _entry(
        True,
        "大模型服务暂时不可用。",
        "The language model API is unavailable.",
        "稍后会自动重试；请检查网络与 ANTHROPIC_BASE_URL。",
        "It is retried automatically; check the network and ANTHROPIC_BASE_URL.",
    ),
    ErrorCode.LLM_STREAM_STALLED: _entry(
        True,
        "大模型输出中途停滞。",
        "The model's streamed answer stalled.",
        "稍后会自动重试。",
        "It is retried automatically.",
    ),
    ErrorCode.LLM_AUTH_FAILED: _entry(
        False,
        "大模型接口鉴权失败（401/403）。",
        "The language model API rejected our credentials (401/403).",
        "请检查 ANTHROPIC_API_KEY，修正后用 artifactd requeue --error-code LLM_AUTH_FAILED 重新排队。",
        "Check ANTHROPIC_API_KEY, then run artifactd requeue --error-code LLM_AUTH_FAILED.",
    ),
    ErrorCode.LLM_SPEND_LIMIT: _entry(
        False,
        "账户已达到消费上限。",
        "The account has reached its spend limit.",
        "请提高账户额度后用 artifactd requeue --error-code LLM_SPEND_LIMIT 重新排队。",
        "Raise the account's limit, then run artifactd requeue --error-code LLM_SPEND_LIMIT.",
    ),
    ErrorCode.LLM_BAD_REQUEST: _entry(
        False,
        "大模型拒绝了请求（4xx）。",
        "The language model API rejected the request (4xx).",
        "请检查模型名称与类型配置中的 max_tokens。",
        "Check the model name and the type's max_tokens.",
    ),
    ErrorCode.INPUT_NOT_FOUND: _entry(
        False,
        "找不到对应的会议任务。",
        "The task for this artifact does not exist.",
        "请先创建任务，再重新生成。",
        "Create the task first, then generate again.",
    ),
    ErrorCode.INPUT_EMPTY: _entry(
        False,
        "会议转写内容为空。",
        "The transcript is empty.",
        "请上传包含内容的转写后重新生成。",
        "Upload a transcript with content and generate again.",
    ),
    ErrorCode.INPUT_TOO_LONG: _entry(
        False,
        "会议转写过长，分段后仍超出模型上限。",
        "The transcript is too long for the model, even in parts.",
        "请拆分会议或选用上下文更长的模型。",
        "Split the meeting or use a model with a longer context.",
    ),
    ErrorCode.OUTPUT_TRUNCATED: _entry(
        False,
        "生成内容超出长度上限被截断。",
        "The output hit the max_tokens limit and was cut off.",
        "请调大该类型的 max_tokens 后重新排队。",
        "Raise the type's max_tokens, then requeue.",
    ),
    ErrorCode.OUTPUT_REFUSED: _entry(
        False,
        "模型拒绝生成该内容。",
        "The model refused to produce this output.",
        "请检查转写内容与提示词。",
        "Check the transcript and the prompt.",
    ),
    ErrorCode.OUTPUT_INVALID: _entry(
        False,
        "生成内容不符合该类型的格式要求。",
        "The output does not match the type's schema.",
        "请检查类型配置中的 JSON Schema 与提示词。",
        "Check the type's JSON Schema and prompt.",
    ),
    ErrorCode.UNKNOWN_ARTIFACT_TYPE: _entry(
        False,
        "未配置该文档类型。",
        "No such artifact type is configured.",
        "请检查类型名称，或在 ARTIFACTD_TYPES_DIR 中添加类型定义。",
        "Check the type's name or add it to ARTIFACTD_TYPES_DIR.",
    ),
    ErrorCode.WORKER_LOST: _entry(
        False,
        "处理该任务的进程多次意外退出。",
        "The workers handling this artifact were lost too many times.",
        "请查看 worker 日志；输入可能导致进程崩溃。",
        "Read the worker logs; the input may crash workers.",
    ),
    ErrorCode.CANCELLED: _entry(
        False,
        "任务已被取消。",
        "The artifact was cancelled.",
        "如需生成，请重新排队。",
        "Requeue it to generate it after all.",
    ),
    ErrorCode.INTERNAL_ERROR: _entry(
        True,
        "内部错误。",
        "An internal error occurred.",
        "会自动重试；详细信息见 worker 日志。",
        "It is retried automatically; details are in the worker log.",
    ),
}

LOCALES = ("zh-CN", "en")


def is_retryable(code: ErrorCode) -> bool:
    return CATALOG[code].retryable


def error_content(
    code: ErrorCode, locale: str, detail: str | None = None
) -> dict[str, str]:
    """The ``content`` of a failed artifact: code, localized message and hint.

    ``detail`` (already free of secrets) is appended to the message.
    """
    entry = CATALOG[code]
    message = entry.message.get(locale, entry.message["en"])
    if detail:
        message = f"{message} ({detail})"
    return {
        "error_code": code.value,
        "error_message": message,
        "hint": entry.hint.get(locale, entry.hint["en"]),
    }


class ArtifactdError(Exception):
    """Root of every error artifactd raises on purpose."""


class ConfigurationError(ArtifactdError):
    """A setting is missing or malformed; the message names the field."""


class DatabaseError(ArtifactdError):
    """PostgreSQL cannot be reached or answered unexpectedly."""


class SchemaOutOfDateError(DatabaseError):
    """The database schema is older than this code expects."""


class InputError(ArtifactdError):
    """A request or input file cannot be used."""


class TranscriptError(InputError):
    """A transcript file cannot be read; the message names the file."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NotificationError(ArtifactdError):
    """A notification channel failed a delivery."""


class JobError(ArtifactdError):
    """One attempt at an artifact ended with an error code."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {detail}" if detail else code.value)
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return is_retryable(self.code)


class RetryableJobError(JobError):
    """A transient failure: the queue tries again after a backoff."""


class PermanentJobError(JobError):
    """A failure that no retry can fix."""


def job_error(
    code: ErrorCode, detail: str | None = None, *, retry_after_s: float | None = None
) -> JobError:
    """Build the right ``JobError`` subclass for ``code``."""
    cls = RetryableJobError if is_retryable(code) else PermanentJobError
    return cls(code, detail, retry_after_s=retry_after_s)


class LeaseLost(Exception):  # noqa: N818 - an outcome, not an error
    """The row's lease token is gone: cancelled or taken over. Discard the work."""


class Cancelled(Exception):  # noqa: N818 - an outcome, not an error
    """An operator cancelled the artifact while it ran."""
