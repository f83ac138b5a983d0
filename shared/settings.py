"""The one settings object, read from the environment and CLI options.

Every setting is an ``ARTIFACTD_*`` variable (plus ``ANTHROPIC_API_KEY`` and
``ANTHROPIC_BASE_URL``) and also a CLI option naming that variable. Values are
validated once at start; a bad one stops the process with a message that
names the variable (exit code 2). The object is frozen; nothing else in the
code reads the environment. Secrets are ``SecretStr`` so they never reach a
log line or a ``repr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigurationError

Locale = Literal["zh-CN", "en"]
GeneratorName = Literal["auto", "anthropic", "offline", "echo"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", populate_by_name=True
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ARTIFACTD_DATABASE_URL", "database_url"),
    )
    """PostgreSQL URL. Unset: an embedded server under ``data_dir``, shared by
    every artifactd process on the machine."""

    listen_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ARTIFACTD_LISTEN_URL", "listen_url"),
    )
    """URL for the LISTEN connection when ``database_url`` goes through PgBouncer
    in transaction mode. Default: ``database_url``."""

    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("artifactd")),
        validation_alias=AliasChoices("ARTIFACTD_DATA_DIR", "data_dir"),
    )
    """Where the embedded PostgreSQL keeps its data. Default: the user data dir."""

    generator: GeneratorName = Field(
        default="auto",
        validation_alias=AliasChoices("ARTIFACTD_GENERATOR", "generator"),
    )
    """``auto`` picks ``anthropic`` when ANTHROPIC_API_KEY is set, else ``offline``."""

    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "anthropic_api_key"),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "anthropic_base_url"),
    )
    model: str | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_MODEL", "model")
    )
    """Overrides every artifact type's model when set."""

    concurrency: int = Field(
        default=8,
        ge=1,
        le=1024,
        validation_alias=AliasChoices("ARTIFACTD_CONCURRENCY", "concurrency"),
    )
    """Jobs one worker process runs at once. Default 8."""

    fleet_concurrency: int | None = Field(
        default=None,
        ge=1,
        validation_alias=AliasChoices(
            "ARTIFACTD_FLEET_CONCURRENCY", "fleet_concurrency"
        ),
    )
    """Rows leased at once across every worker on every host. Default: no cap."""

    lease_s: float = Field(
        default=60.0,
        ge=1.0,
        le=86_400.0,
        validation_alias=AliasChoices("ARTIFACTD_LEASE_S", "lease_s"),
    )
    """Seconds a claim holds a row without renewal. Renewed every third. Default 60."""

    max_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        validation_alias=AliasChoices("ARTIFACTD_MAX_ATTEMPTS", "max_attempts"),
    )
    """Attempts per artifact for rows created by artifactd. Default 5."""

    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        validation_alias=AliasChoices(
            "ARTIFACTD_REQUEST_TIMEOUT_S", "request_timeout_s"
        ),
    )
    """Seconds one LLM request may take. Default 300."""

    stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("ARTIFACTD_STALL_TIMEOUT_S", "stall_timeout_s"),
    )
    """Seconds a streamed answer may go without an event. Default 60."""

    attempt_timeout_s: float = Field(
        default=900.0,
        gt=0,
        validation_alias=AliasChoices(
            "ARTIFACTD_ATTEMPT_TIMEOUT_S", "attempt_timeout_s"
        ),
    )
    """Seconds one whole attempt (all parts and retries) may take. Default 900."""

    context_tokens: int = Field(
        default=200_000,
        ge=1_024,
        validation_alias=AliasChoices("ARTIFACTD_CONTEXT_TOKENS", "context_tokens"),
    )
    """Tokens the model reads and writes in one request; a longer transcript is
    generated in parts and combined. Default 200000."""

    poll_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("ARTIFACTD_POLL_INTERVAL_S", "poll_interval_s"),
    )
    """Seconds between claims when no NOTIFY arrives. Default 2."""

    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        validation_alias=AliasChoices("ARTIFACTD_SHUTDOWN_GRACE_S", "shutdown_grace_s"),
    )
    """Seconds running jobs get to finish after SIGTERM before release. Default 30."""

    wecom_webhook_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "ARTIFACTD_WECOM_WEBHOOK_URL", "wecom_webhook_url"
        ),
    )
    """WeCom group robot webhook (any URL). The URL carries the robot key."""

    frontend_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ARTIFACTD_FRONTEND_URL", "frontend_url"),
    )
    """Base URL for links in notifications."""

    feishu_webhook_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "ARTIFACTD_FEISHU_WEBHOOK_URL", "feishu_webhook_url"
        ),
    )
    """Feishu/Lark custom bot webhook (any URL). The URL carries the bot token."""

    feishu_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ARTIFACTD_FEISHU_SECRET", "feishu_secret"),
    )
    """Signing secret of the Feishu/Lark bot, when it has one. Default: unsigned."""

    webhook_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ARTIFACTD_WEBHOOK_URL", "webhook_url"),
    )
    """Generic JSON webhook that gets every final state. Default: off."""

    webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ARTIFACTD_WEBHOOK_SECRET", "webhook_secret"),
    )
    """HMAC-SHA256 key for the generic webhook's signature header. Default: unsigned."""

    notify_rate_per_minute: int = Field(
        default=20,
        ge=1,
        le=10_000,
        validation_alias=AliasChoices(
            "ARTIFACTD_NOTIFY_RATE_PER_MINUTE", "notify_rate_per_minute"
        ),
    )
    """Messages one chat robot gets in any 60 s, across every notifier. Default 20."""

    notify_max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        validation_alias=AliasChoices(
            "ARTIFACTD_NOTIFY_MAX_ATTEMPTS", "notify_max_attempts"
        ),
    )
    """Deliveries tried per notification before it is marked dead. Default 8."""

    notify_backoff_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("ARTIFACTD_NOTIFY_BACKOFF_S", "notify_backoff_s"),
    )
    """Seconds before the first delivery retry; doubles per attempt, to 10 min. Default 5."""

    notify_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        validation_alias=AliasChoices("ARTIFACTD_NOTIFY_TIMEOUT_S", "notify_timeout_s"),
    )
    """Seconds one delivery request may take. Default 10."""

    notify_poll_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices(
            "ARTIFACTD_NOTIFY_POLL_INTERVAL_S", "notify_poll_interval_s"
        ),
    )
    """Seconds between outbox looks when no NOTIFY arrives. Default 5."""

    worker_notifier: bool = Field(
        default=True,
        validation_alias=AliasChoices("ARTIFACTD_WORKER_NOTIFIER", "worker_notifier"),
    )
    """Whether ``artifactd run`` delivers notifications too. Default true."""

    timezone: str = Field(
        default="UTC", validation_alias=AliasChoices("ARTIFACTD_TIMEZONE", "timezone")
    )
    """IANA zone for times shown in notifications, e.g. Asia/Shanghai. Default UTC."""

    api_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_API_TOKEN", "api_token")
    )
    """Bearer token the HTTP API requires on every route but /healthz."""

    api_max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices(
            "ARTIFACTD_API_MAX_BODY_BYTES", "api_max_body_bytes"
        ),
    )
    """Largest request body the HTTP API reads, in bytes; larger is a 413.
    Default 10485760 (10 MiB)."""

    api_max_batch_items: int = Field(
        default=100,
        ge=1,
        le=10_000,
        validation_alias=AliasChoices(
            "ARTIFACTD_API_MAX_BATCH_ITEMS", "api_max_batch_items"
        ),
    )
    """Most items one POST /api/v1/batches may carry. Default 100."""

    api_keepalive_s: float = Field(
        default=15.0,
        gt=0,
        le=300,
        validation_alias=AliasChoices("ARTIFACTD_API_KEEPALIVE_S", "api_keepalive_s"),
    )
    """Seconds between keep-alive comments on an idle event stream. Default 15."""

    locale: Locale = Field(
        default="zh-CN", validation_alias=AliasChoices("ARTIFACTD_LOCALE", "locale")
    )
    types_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_TYPES_DIR", "types_dir")
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        validation_alias=AliasChoices("ARTIFACTD_LOG_FORMAT", "log_format"),
    )
    """``auto``: coloured console on a terminal, JSON otherwise."""

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        validation_alias=AliasChoices("ARTIFACTD_LOG_LEVEL", "log_level"),
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("ARTIFACTD_METRICS_PORT", "metrics_port"),
    )
    """Port for the worker's Prometheus endpoint. Default: off."""

    @field_validator("database_url", "listen_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        raw = value.get_secret_value()
        if not raw.startswith(
            ("postgresql://", "postgres://", "postgresql+psycopg://")
        ):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator(
        "anthropic_api_key",
        "wecom_webhook_url",
        "api_token",
        "feishu_webhook_url",
        "feishu_secret",
        "webhook_url",
        "webhook_secret",
    )
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("wecom_webhook_url", "feishu_webhook_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("http://", "https://")
        ):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name") from None
        return value

    @field_validator("anthropic_base_url", "frontend_url", "model")
    @classmethod
    def _empty_str_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @property
    def notification_channels(self) -> list[str]:
        """Outbox channels for every final state: each one whose URL is set.

        The one rule for workers, the API and the CLI alike, so a final state
        gets the same notifications whoever writes it.
        """
        urls = {
            "wecom": self.wecom_webhook_url,
            "feishu": self.feishu_webhook_url,
            "webhook": self.webhook_url,
        }
        return [name for name, url in urls.items() if url is not None]

    @property
    def resolved_generator(self) -> str:
        if self.generator != "auto":
            return self.generator
        return "anthropic" if self.anthropic_api_key else "offline"


# Environment variable for each field, for CLI help and error messages.
def _env_name(field: Any) -> str:
    """The upper-case alias among a field's ``AliasChoices``: its variable."""
    choices = field.validation_alias.choices
    return next(a for a in choices if isinstance(a, str) and a.isupper())


ENV_NAMES: dict[str, str] = {
    name: _env_name(field) for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI ``overrides`` (None = not given).

    Raises ConfigurationError naming each bad variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else "?"
            name = ENV_NAMES.get(loc, loc)
            problems.append(f"{name}: {err['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None
