"""The seam between the executor and whatever writes the document.

A generator turns a ``GenerationRequest`` into a ``GenerationResult`` or
raises a ``JobError`` carrying an error code. It never touches the database;
progress goes out through the ``report_progress`` callback, which the
executor throttles and persists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from shared.artifact_types import ArtifactType

ProgressCallback = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class GenerationRequest:
    artifact_id: str
    task_id: str
    task_name: str
    meeting_time: datetime | None
    language: str | None
    transcript: str
    artifact_type: ArtifactType
    locale: str
    attempt: int

    def render_user_prompt(self, transcript: str | None = None) -> str:
        return self.artifact_type.render_user_prompt(
            transcript=self.transcript if transcript is None else transcript,
            task_name=self.task_name,
            meeting_time=self.meeting_time.isoformat() if self.meeting_time else "",
            language=self.language or "auto",
        )


@dataclass
class GenerationResult:
    format: Literal["markdown", "json"]
    text: str
    data: Any = None
    # model, usage, stop_reason, request ids, durations: merged into the row's metadata
    metadata: dict[str, Any] = field(default_factory=dict)

    def content(self) -> dict[str, Any]:
        content: dict[str, Any] = {"format": self.format, "text": self.text}
        if self.data is not None:
            content["data"] = self.data
        return content


async def no_progress(_: dict[str, Any]) -> None:
    return None


class Generator(Protocol):
    name: str

    async def generate(
        self, request: GenerationRequest, report_progress: ProgressCallback
    ) -> GenerationResult: ...

    async def aclose(self) -> None: ...


class LLMGate(Protocol):
    """Fleet-wide backpressure shared by every worker on every host.

    ``wait_open`` blocks while a 429/529 with ``retry-after`` has paused the
    fleet; ``pause`` extends the pause for everyone (never shortens it).
    """

    async def wait_open(self) -> None: ...

    async def pause(self, seconds: float, reason: str) -> None: ...


class OpenGate:
    """A gate that never closes: for one-off runs and unit tests."""

    async def wait_open(self) -> None:
        return None

    async def pause(self, seconds: float, reason: str) -> None:
        return None
