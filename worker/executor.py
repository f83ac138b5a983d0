"""Runs one claimed artifact as a short recipe of named steps.

load input → render request → call the generator → classify the outcome →
persist (through the completer) → log one outcome line. The executor never
decides *when* to run; the runner does. It never writes without the lease
token; the completer's statements are fenced by it.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import psycopg
import structlog

from shared.artifact_types import ArtifactType
from shared.errors import (
    ErrorCode,
    JobError,
    LeaseLost,
    PermanentJobError,
    error_content,
    job_error,
)
from shared.logging import bind_context
from shared.text import storable, storable_text
from worker.claimer import ClaimedRow
from worker.completer import Completer, Finish, Release
from worker.generators.base import GenerationRequest, GenerationResult, Generator
from worker.progress import ProgressWriter
from worker.retry import retry_delay_s


@dataclass
class Job:
    """One claimed row while this process holds it."""

    row: ClaimedRow
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    lost: bool = False
    # Set once the outcome is with the completer: from then on the job only
    # waits for its write, and a renewal that misses the row (because the
    # write just committed) must not cancel it.
    handed_over: bool = False
    # Set when the claim that rode on this job's final write came back short
    # (the fleet cap full or the queue empty): its end then wakes no claim.
    quiet_end: bool = False

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def token(self) -> str:
        return self.row.lease_token


@dataclass(frozen=True)
class Outcome:
    state: str  # "success", "failed" or "retry"
    error_code: str | None = None
    written: bool = True


SUCCEEDED = Outcome("success")


class AttemptDeadlines:
    """Sets off each attempt's ``asyncio.Timeout`` when its time is up.

    Attempts enter ``asyncio.timeout(None)`` and hand it over here; when
    the deadline passes, ``reschedule`` to it ends the attempt with
    ``TimeoutError`` as ``asyncio.timeout(limit)`` would. Every attempt gets
    the same limit, so deadlines fall due in the order attempts start: the
    oldest running attempt is always the next to expire, and one loop timer
    serves them all. A timer per attempt cost about a twentieth of an echo
    job's CPU: each one is pushed onto the event loop's heap and, cancelled,
    stays there until it is swept out.

    The timer is left armed when an attempt ends early; when it fires it
    sets off what is due and re-arms for the oldest attempt still running,
    so it fires about once per limit however many attempts start.
    """

    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s
        # Running attempts, oldest first (a dict keeps insertion order and
        # forgets any entry at once), with their deadlines on the loop clock.
        self._running: dict[asyncio.Timeout, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, timeout: asyncio.Timeout) -> None:
        """Watch ``timeout``, entered and not yet exited, from now on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limit_s
        self._running[timeout] = deadline
        # (A timer of an earlier event loop, one that stopped, never fires.)
        if self._timer is None or self._timer_loop is not loop:
            self._arm(loop, deadline)

    def discard(self, timeout: asyncio.Timeout) -> None:
        """Stop watching ``timeout``; call it before the timeout is exited."""
        self._running.pop(timeout, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._expire)
        self._timer_loop = loop

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._running:
            timeout, deadline = next(iter(self._running.items()))
            if deadline > now:
                self._arm(loop, deadline)
                return
            del self._running[timeout]
            # A deadline already past cancels the attempt's task at once;
            # leaving the ``async with`` turns that into TimeoutError.
            timeout.reschedule(deadline)


class Executor:
    def __init__(
        self,
        *,
        generator: Generator,
        artifact_types: dict[str, ArtifactType],
        completer: Completer,
        progress: ProgressWriter,
        locale: str,
        attempt_timeout_s: float,
        worker_id: str,
    ) -> None:
        self._generator = generator
        self._types = artifact_types
        self._completer = completer
        self._progress = progress
        self._locale = locale
        self._attempt_timeout_s = attempt_timeout_s
        self._deadlines = AttemptDeadlines(attempt_timeout_s)
        self._worker_id = worker_id
        # Bound now, under the process's logging configuration: a module-level
        # proxy would assemble a new logger for each of a job's log calls.
        self._log = structlog.get_logger(__name__).bind()

    async def execute(self, job: Job) -> Outcome:
        row = job.row
        # The job runs in its own task, so these go with its events only.
        bind_context(
            artifact_id=row.id,
            task_id=row.task_id,
            artifact_type=row.artifact_type,
            attempt=row.attempts,
        )
        if row.lost_owner:
            self._log.warning("artifact.reclaimed", previous_owner=row.lost_owner)
        self._log.debug("artifact.claimed")

        try:
            request = self._load_input(row)
            result = await self._generate(request, job)
            self._check_output(request.artifact_type, result)
        except LeaseLost:
            job.lost = True
            self._log.warning("artifact.lease_lost", action="result discarded")
            return Outcome("lost", written=False)
        except JobError as exc:
            return await self._persist_failure(job, exc)
        except (
            Exception
        ) as exc:  # anything unexpected: retry, traceback to the log only
            self._log.error(
                "artifact.internal_error",
                error=repr(exc),
                traceback=traceback.format_exc(),
            )
            return await self._persist_failure(
                job, job_error(ErrorCode.INTERNAL_ERROR, type(exc).__name__)
            )
        try:
            return await self._persist_success(job, result)
        except Exception as exc:  # the database refused the document itself
            self._log.error("artifact.result_unstorable", error=repr(exc))
            return await self._persist_failure(
                job,
                job_error(ErrorCode.INTERNAL_ERROR, "the result could not be stored"),
            )

    def _load_input(self, row: ClaimedRow) -> GenerationRequest:
        if not row.task_exists:
            raise PermanentJobError(ErrorCode.INPUT_NOT_FOUND, f"task {row.task_id!r}")
        artifact_type = self._types.get(row.artifact_type)
        if artifact_type is None:
            raise PermanentJobError(
                ErrorCode.UNKNOWN_ARTIFACT_TYPE, f"{row.artifact_type!r}"
            )
        transcript = storable_text(row.transcript or "")
        if not transcript.strip():
            raise PermanentJobError(ErrorCode.INPUT_EMPTY)
        return GenerationRequest(
            artifact_id=row.id,
            task_id=row.task_id,
            task_name=row.task_name or "",
            meeting_time=row.meeting_time,
            language=row.language,
            transcript=transcript,
            artifact_type=artifact_type,
            locale=self._locale,
            attempt=row.attempts,
        )

    async def _generate(self, request: GenerationRequest, job: Job) -> GenerationResult:
        async def report(progress: dict[str, Any]) -> None:
            try:
                await self._progress.report(job.id, job.token, progress)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # Progress is a courtesy. A database restart used to surface
                # here mid-stream and end the attempt as INTERNAL_ERROR,
                # throwing the model's answer away; the final write is
                # fenced by the lease token and retried, so going on is safe.
                self._log.warning(
                    "artifact.progress_failed",
                    error=" ".join(str(exc).split()),
                    action="job goes on",
                )

        timeout = asyncio.timeout(None)  # no deadline of its own: see AttemptDeadlines
        try:
            async with timeout:
                self._deadlines.add(timeout)
                try:
                    return await self._generator.generate(request, report)
                finally:
                    self._deadlines.discard(timeout)
        except TimeoutError:
            raise job_error(
                ErrorCode.LLM_TIMEOUT, f"attempt exceeded {self._attempt_timeout_s:g}s"
            ) from None

    def _check_output(
        self, artifact_type: ArtifactType, result: GenerationResult
    ) -> None:
        if artifact_type.format != "json" or artifact_type.json_schema is None:
            return
        try:
            jsonschema.validate(result.data, artifact_type.json_schema)
        except jsonschema.ValidationError as exc:
            raise PermanentJobError(
                ErrorCode.OUTPUT_INVALID, exc.message[:300]
            ) from None

    async def _persist_success(self, job: Job, result: GenerationResult) -> Outcome:
        duration_ms = round((time.monotonic() - job.started) * 1000)
        metadata = storable(
            {
                **result.metadata,
                "duration_ms": duration_ms,
                "worker_id": self._worker_id,
            }
        )
        job.handed_over = True
        written = await self._completer.finish(
            Finish(
                job.id,
                job.token,
                "success",
                storable(result.content()),
                metadata,
                None,
                job.row.attempts,
            )
        )
        if not written:
            self._log.warning(
                "artifact.write_refused", reason="lease gone", action="result discarded"
            )
            return Outcome("success", written=False)
        self._log.info(
            "artifact.succeeded",
            duration_ms=duration_ms,
            usage=result.metadata.get("usage"),
            model=result.metadata.get("model"),
        )
        return SUCCEEDED

    async def _persist_failure(self, job: Job, exc: JobError) -> Outcome:
        row = job.row
        duration_ms = round((time.monotonic() - job.started) * 1000)
        detail = storable_text(exc.detail) if exc.detail else None
        error = {
            "error_code": exc.code.value,
            "detail": detail,
            "attempt": row.attempts,
            "worker_id": self._worker_id,
            "duration_ms": duration_ms,
        }
        if exc.retryable and row.attempts < row.max_attempts:
            delay_s = retry_delay_s(row.attempts, exc.retry_after_s)
            job.handed_over = True
            written = await self._completer.release(
                Release(job.id, job.token, delay_s, error)
            )
            if written:
                self._log.warning(
                    "artifact.retry_scheduled",
                    error_code=exc.code.value,
                    error=detail,
                    retry_in_s=round(delay_s, 2),
                    duration_ms=duration_ms,
                )
            return Outcome("retry", exc.code.value, written)

        content = error_content(exc.code, self._locale, detail)
        job.handed_over = True
        written = await self._completer.finish(
            Finish(
                job.id,
                job.token,
                "failed",
                content,
                {"duration_ms": duration_ms},
                error,
                row.attempts,
            )
        )
        if written:
            self._log.error(
                "artifact.failed",
                error_code=exc.code.value,
                error=detail,
                duration_ms=duration_ms,
            )
        else:
            self._log.warning(
                "artifact.write_refused",
                reason="lease gone",
                action="failure discarded",
            )
        return Outcome("failed", exc.code.value, written)
