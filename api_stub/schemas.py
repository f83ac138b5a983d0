"""Request and response bodies of the HTTP API, as pydantic models.

They are the OpenAPI document too, so each field says what it holds. Text
that reaches PostgreSQL is checked here for what the database refuses (NUL
characters, unpaired surrogates), so a bad body is a 422 naming the field
rather than a 500 from the driver.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

State = Literal["processing", "success", "failed"]

# Caller-chosen task ids appear in URL paths, so they keep to URL-safe text.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$"


def storable_text(value: str) -> str:
    """Refuse text PostgreSQL cannot store: NUL, or not encodable as UTF-8."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _storable_time(value: datetime) -> datetime:
    # The database hands times back in UTC; one that does not fit a Python
    # datetime there would fail on the way out, so refuse it on the way in.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not 1 <= value.astimezone(UTC).year <= 9998:
        raise ValueError("is out of range")
    return value


Text = Annotated[str, AfterValidator(storable_text)]
MeetingTime = Annotated[AwareDatetime, AfterValidator(_storable_time)]


class TaskCreate(BaseModel):
    """A meeting to write artifacts about."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, Field(min_length=1, max_length=500)]
    transcript: Annotated[
        Text, Field(description="The whole transcript as plain text; may be long.")
    ]
    meeting_time: MeetingTime | None = Field(
        default=None, description="When the meeting took place, with a UTC offset."
    )
    note_type: Annotated[Text, Field(min_length=1, max_length=100)] | None = None
    language: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] | None = Field(
        default=None, description="zh, en, ... or null to detect it."
    )
    id: Annotated[str, Field(pattern=TASK_ID_PATTERN)] | None = Field(
        default=None,
        description="The task id to use; generated when omitted.",
    )


class TaskCreated(BaseModel):
    task_id: str


class ArtifactAccepted(BaseModel):
    """The answer to generate, regenerate and each batch item."""

    artifact_id: str
    task_id: str
    artifact_type: str
    version: int
    state: State
    created_at: datetime


class ErrorInfo(BaseModel):
    """Why a failed artifact failed (its ``content``), localized."""

    error_code: str | None
    error_message: str | None
    hint: str | None


class ArtifactStatus(BaseModel):
    """What front ends poll: ``error`` is present only when ``state`` is failed."""

    artifact_id: str
    state: State
    created_at: datetime
    updated_at: datetime
    attempts: int
    progress: dict[str, Any] | None = Field(
        description="The running job's latest progress report, if any."
    )
    error: ErrorInfo | None = None


class Artifact(BaseModel):
    """One artifact row, content included; ``error`` only when failed."""

    artifact_id: str
    task_id: str
    artifact_type: str
    version: int
    state: State
    content: dict[str, Any] | None = Field(
        description='On success {"format", "text", "data"?}; on failure the error.'
    )
    metadata: dict[str, Any]
    priority: int
    attempts: int
    max_attempts: int
    run_after: datetime
    batch_id: str | None
    lease_owner: str | None = Field(description="The worker holding it now, if any.")
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorInfo | None = None


class BatchItemCreate(BaseModel):
    """One generation: an existing task by ``task_id``, or a new ``task``."""

    model_config = ConfigDict(extra="forbid")

    artifact_type: Annotated[Text, Field(min_length=1, max_length=64)]
    task_id: Annotated[Text, Field(min_length=1, max_length=1000)] | None = None
    task: TaskCreate | None = None

    @model_validator(mode="after")
    def _one_task(self) -> BatchItemCreate:
        if (self.task_id is None) == (self.task is None):
            raise ValueError("give exactly one of task_id and task")
        return self


class BatchCreate(BaseModel):
    """Many generations at once; each item adds a version, like regenerate."""

    model_config = ConfigDict(extra="forbid")

    items: list[BatchItemCreate] = Field(
        min_length=1,
        description="At most ARTIFACTD_API_MAX_BATCH_ITEMS items (default 100).",
    )


class BatchAccepted(BaseModel):
    batch_id: str
    created_at: datetime
    items: list[ArtifactAccepted]


class BatchItemState(BaseModel):
    artifact_id: str
    task_id: str
    artifact_type: str
    version: int
    state: State
    created_at: datetime
    updated_at: datetime
    error: ErrorInfo | None = None


class BatchCounts(BaseModel):
    processing: int
    success: int
    failed: int


class Batch(BaseModel):
    """A batch's counts per state and each item's state, in the order given."""

    batch_id: str
    created_at: datetime
    total: int
    counts: BatchCounts
    done: bool = Field(description="True once no item is left in processing.")
    items: list[BatchItemState]


class Health(BaseModel):
    status: Literal["ok"]


def error_of(row: dict[str, Any]) -> ErrorInfo | None:
    """A failed row's ``{error_code, error_message, hint}``; None otherwise."""
    content = row.get("content")
    if row.get("state") != "failed" or not isinstance(content, dict):
        return None
    return ErrorInfo(
        error_code=content.get("error_code"),
        error_message=content.get("error_message"),
        hint=content.get("hint"),
    )


def accepted_from_row(row: dict[str, Any]) -> ArtifactAccepted:
    return ArtifactAccepted(
        artifact_id=row["id"],
        task_id=row["task_id"],
        artifact_type=row["artifact_type"],
        version=row["version"],
        state=row["state"],
        created_at=row["created_at"],
    )


def artifact_from_row(row: dict[str, Any]) -> Artifact:
    fields = {name: row[name] for name in Artifact.model_fields if name in row}
    fields["artifact_id"] = row["id"]
    error = error_of(row)
    if error is not None:
        fields["error"] = error
    return Artifact.model_validate(fields)


def batch_item_from_row(row: dict[str, Any]) -> BatchItemState:
    fields = {name: row[name] for name in BatchItemState.model_fields if name in row}
    fields["artifact_id"] = row["id"]
    error = error_of(row)
    if error is not None:
        fields["error"] = error
    return BatchItemState.model_validate(fields)
