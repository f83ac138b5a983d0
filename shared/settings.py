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

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigurationError

Locale = Literal["zh-CN", "en"]
GeneratorName = Literal["auto", "anthropic", "offline", "echo"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_DATABASE_URL", "database_url")
    )
    """PostgreSQL URL. Unset: an embedded server under ``data_dir``, shared by
    every artifactd process on the machine."""

    listen_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_LISTEN_URL", "listen_url")
    )
    """URL for the LISTEN connection when ``database_url`` goes through PgBouncer
    in transaction mode. Default: ``database_url``."""

    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("artifactd")),
        validation_alias=AliasChoices("ARTIFACTD_DATA_DIR", "data_dir"),
    )
    """Where the embedded PostgreSQL keeps its data. Default: the user data dir."""

    generator: GeneratorName = Field(
        default="auto", validation_alias=AliasChoices("ARTIFACTD_GENERATOR", "generator")
    )
    """``auto`` picks ``anthropic`` when ANTHROPIC_API_KEY is set, else ``offline``."""

    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "anthropic_api_key")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "anthropic_base_url")
    )
    model: str | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_MODEL", "model")
    )
    """Overrides every artifact type's model when set."""

    concurrency: int = Field(
        default=8, ge=1, le=1024,
        validation_alias=AliasChoices("ARTIFACTD_CONCURRENCY", "concurrency"),
    )
    """Jobs one worker process runs at once. Default 8."""

    fleet_concurrency: int | None = Field(
        default=None, ge=1,
        validation_alias=AliasChoices("ARTIFACTD_FLEET_CONCURRENCY", "fleet_concurrency"),
    )
    """Rows leased at once across every worker on every host. Default: no cap."""

    lease_s: float = Field(
        default=60.0, ge=1.0, le=86_400.0,
        validation_alias=AliasChoices("ARTIFACTD_LEASE_S", "lease_s"),
    )
    """Seconds a claim holds a row without renewal. Renewed every third. Default 60."""

    max_attempts: int = Field(
        default=5, ge=1, le=100,
        validation_alias=AliasChoices("ARTIFACTD_MAX_ATTEMPTS", "max_attempts"),
    )
    """Attempts per artifact for rows created by artifactd. Default 5."""

    request_timeout_s: float = Field(
        default=300.0, gt=0,
        validation_alias=AliasChoices("ARTIFACTD_REQUEST_TIMEOUT_S", "request_timeout_s"),
    )
    """Seconds one LLM request may take. Default 300."""

    stall_timeout_s: float = Field(
        default=60.0, gt=0,
        validation_alias=AliasChoices("ARTIFACTD_STALL_TIMEOUT_S", "stall_timeout_s"),
    )
    """Seconds a streamed answer may go without an event. Default 60."""

    attempt_timeout_s: float = Field(
        default=900.0, gt=0,
        validation_alias=AliasChoices("ARTIFACTD_ATTEMPT_TIMEOUT_S", "attempt_timeout_s"),
    )
    """Seconds one whole attempt (all parts and retries) may take. Default 900."""

    poll_interval_s: float = Field(
        default=2.0, gt=0, le=3600,
        validation_alias=AliasChoices("ARTIFACTD_POLL_INTERVAL_S", "poll_interval_s"),
    )
    """Seconds between claims when no NOTIFY arrives. Default 2."""

    shutdown_grace_s: float = Field(
        default=30.0, ge=0,
        validation_alias=AliasChoices("ARTIFACTD_SHUTDOWN_GRACE_S", "shutdown_grace_s"),
    )
    """Seconds running jobs get to finish after SIGTERM before release. Default 30."""

    wecom_webhook_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ARTIFACTD_WECOM_WEBHOOK_URL", "wecom_webhook_url"),
    )
    """WeCom group robot webhook (any URL). The URL carries the robot key."""

    frontend_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_FRONTEND_URL", "frontend_url")
    )
    """Base URL for links in notifications."""

    api_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_API_TOKEN", "api_token")
    )
    """Bearer token the HTTP API requires on every route but /healthz."""

    locale: Locale = Field(
        default="zh-CN", validation_alias=AliasChoices("ARTIFACTD_LOCALE", "locale")
    )
    types_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("ARTIFACTD_TYPES_DIR", "types_dir")
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", validation_alias=AliasChoices("ARTIFACTD_LOG_FORMAT", "log_format")
    )
    """``auto``: coloured console on a terminal, JSON otherwise."""

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", validation_alias=AliasChoices("ARTIFACTD_LOG_LEVEL", "log_level")
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        validation_alias=AliasChoices("ARTIFACTD_METRICS_PORT", "metrics_port"),
    )
    """Port for the worker's Prometheus endpoint. Default: off."""

    @field_validator("database_url", "listen_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        raw = value.get_secret_value()
        if not raw.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("anthropic_api_key", "wecom_webhook_url", "api_token")
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("anthropic_base_url", "frontend_url", "model")
    @classmethod
    def _empty_str_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @property
    def resolved_generator(self) -> str:
        if self.generator != "auto":
            return self.generator
        return "anthropic" if self.anthropic_api_key else "offline"


# Environment variable for each field, for CLI help and error messages.
ENV_NAMES: dict[str, str] = {
    name: next(a for a in field.validation_alias.choices if a.isupper())  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
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
