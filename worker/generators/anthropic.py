"""The ``anthropic`` generator: Claude through the official SDK, streamed.

This module is the seam to the Messages API. Everything the SDK or its HTTP
client can raise is translated here into a ``JobError`` with a DESIGN.md
code; nothing above it sees an SDK type. It does not touch the database,
claim rows or decide about attempts: it turns one request into one document
or one code.

What the installed SDK (``anthropic`` 2.x) really does, checked in its
source rather than taken from older examples:

- HTTP goes through its own fork of httpx, the ``httpx2`` package; passing
  an ``httpx`` object (a timeout, a client) is rejected. ``timeout`` takes a
  float or an ``httpx2.Timeout``, whose read timeout applies to each socket
  read, not to the whole stream, so the stall and attempt limits here are
  our own.
- With the ``aiohttp`` extra, ``DefaultAioHttpClient`` keeps the ``httpx2``
  interface and sends through aiohttp instead (a bridge vendored in the
  SDK, which turns aiohttp's errors into the ``httpx2`` ones above). It is
  what this generator uses: a streamed request costs the worker about 30 %
  less CPU than over ``httpx2``'s own transport (anyio and httpcore), and
  under a fleet cap that CPU is time between one request ending and the
  next starting. Proxy variables still apply: httpx2 reads
  them and the bridge's client builds an aiohttp transport for each.
- ``api_key`` goes out as ``Authorization: Bearer <key>``, not
  ``x-api-key``, with ``anthropic-version: 2026-10-21``. With an explicit
  key the SDK reads no credential variables; with ``base_url=None`` it
  falls back to ``ANTHROPIC_BASE_URL``.
- ``messages.create()`` (like ``messages.stream()``) takes no
  ``temperature``, ``top_p`` or ``top_k``; the API rejects sampling
  parameters under this version, so none are sent.
- The SDK retries 408, 409, 429, 5xx and connection errors itself, twice by
  default, honouring ``retry-after``; ``max_retries=0`` turns that off so
  that tenacity here is the only retry loop inside an attempt.
- Errors: ``APIConnectionError`` (connect failed) and its subclass
  ``APITimeoutError`` before any answer; ``APIStatusError`` for a 4xx/5xx,
  picked by status (``RateLimitError`` 429, ``OverloadedError`` 529 under
  ``InternalServerError``, ...) and carrying ``status_code``, ``type``
  (``error.type``), ``api_message``, ``error_code`` (``error.details``,
  e.g. ``enforced_spend_limit_reached``), ``request_id`` and the
  ``response`` with its headers.
- Streaming: ``await client.messages.create(..., stream=True)`` sends the
  request, raises the errors above, and returns an ``AsyncStream`` of the
  raw events once the status line is in: ``message_start`` with usage,
  ``content_block_delta`` with text, ``message_delta`` with the stop reason
  and cumulative usage, ``message_stop``. The SDK drops ``ping`` events, so
  pings alone count as a stall here. An ``error`` event mid-stream raises
  ``APIStatusError`` with the stream's own ``status_code`` (200) and the
  event's ``type``. A connection cut mid-stream raises the bare ``httpx2``
  error (``RemoteProtocolError``, ``ReadError``) up to 2.16; from 2.17 the
  SDK wraps a failed body read as ``APIConnectionError`` (a read timeout as
  ``APITimeoutError``) with the ``httpx2`` error as its cause, the same
  types as a request that never got through, so whether the stream had
  begun is what tells a cut stream from an unreachable API here. The
  ``request-id`` header is on ``stream.response``.
- ``messages.stream()`` wraps that same stream in a helper that, on every
  event, rebuilds a message snapshot (``message_start`` parametrises a
  pydantic generic, a new class whenever the last one was collected) and
  builds extra events: about 1 ms of CPU per request on the benchmark
  machine, for what ``_Accumulator`` keeps here by the helper's own rules.
- At DEBUG the ``anthropic`` logger prints request options, prompts
  included: keep it at WARNING.

Limits, all per attempt: ``request_timeout_s`` per HTTP request (headers
and body), ``stall_timeout_s`` between stream events once the answer has
started, ``attempt_timeout_s`` over everything including backoff sleeps.

The most requests one artifact can cost. A transcript that fits is one
part and needs no combine request; one that does not is split into ``P``
parts plus one combine request, each tried at most ``max_tries`` times::

    per attempt:  max_tries                  when P == 1
                  (P + 1) * max_tries        when P > 1
    per artifact: max_attempts * that

``P`` is bounded too: a split is accepted only if ``P * max_tokens`` of part
outputs fit one combine request, so ``P <= context_tokens // max_tokens``.
A permanent code stops at the request that produced it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import jsonschema
import structlog
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import stop_base

from shared.artifact_types import ArtifactType
from shared.errors import ErrorCode, is_retryable, job_error
from worker.generators.base import (
    GenerationRequest,
    GenerationResult,
    LLMGate,
    ProgressCallback,
)

log = structlog.get_logger(__name__)

PROGRESS_INTERVAL_S = 0.25
# Requests per step (the whole transcript, a part, or the combine) in one
# attempt: the first try and two retries.
MAX_TRIES = 3
# Characters per token for text that is not CJK. English averages about four;
# a little less keeps the estimate on the high side for names and numbers.
CHARS_PER_TOKEN = 3.5
# Fences the model sometimes wraps JSON in, with or without a language tag.
JSON_FENCE_RE = re.compile(r"^\s*```[a-zA-Z]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)
# CJK ideographs, kana, Hangul and full-width forms: about one token each.
CJK_RE = re.compile(
    "[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003ffff]"
)
SPEND_LIMIT_RE = re.compile(
    r"spend(ing)? limit|usage limit|credit balance|billing", re.IGNORECASE
)
PROMPT_TOO_LONG_RE = re.compile(r"prompt is too long", re.IGNORECASE)
SPEND_LIMIT_ERROR_CODES = frozenset(
    {
        "contract_spend_limit_reached",
        "enforced_spend_limit_reached",
        "linked_organization_billing_unavailable",
        "linked_organization_spend_limit_reached",
    }
)
# The code for each ``error.type`` an ``error`` event can carry mid-stream,
# where there is no HTTP status to go by; unknown types count as unavailable.
MID_STREAM_ERROR_CODES = {
    "overloaded_error": ErrorCode.LLM_OVERLOADED,
    "rate_limit_error": ErrorCode.LLM_RATE_LIMITED,
    "api_error": ErrorCode.LLM_UNAVAILABLE,
    "timeout_error": ErrorCode.LLM_TIMEOUT,
    "authentication_error": ErrorCode.LLM_AUTH_FAILED,
    "permission_error": ErrorCode.LLM_AUTH_FAILED,
    "billing_error": ErrorCode.LLM_SPEND_LIMIT,
    "invalid_request_error": ErrorCode.LLM_BAD_REQUEST,
    "not_found_error": ErrorCode.LLM_BAD_REQUEST,
    "request_too_large": ErrorCode.INPUT_TOO_LONG,
}
TRUNCATING_STOP_REASONS = frozenset({"max_tokens", "model_context_window_exceeded"})

PART_NOTE = (
    "\n\nThe transcript below is part {part} of {parts} of one meeting, split "
    "because the whole does not fit at once. Write the document for this part "
    "only; a later step merges the parts."
)
COMBINE_NOTE = (
    "\n\nThe meeting was too long to read at once, so a document was written "
    "for each consecutive part of its transcript. In place of the transcript "
    "you get those part documents, in order. Merge them into one document for "
    "the whole meeting, in the required format, removing repetition."
)
PART_HEADER = "=== part {part} of {parts} ===\n"


def estimate_tokens(text: str) -> int:
    """A conservative local token estimate: CJK one per character, else 3.5 chars."""
    cjk = len(CJK_RE.findall(text))
    return cjk + math.ceil((len(text) - cjk) / CHARS_PER_TOKEN)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_json_output(text: str, schema: dict[str, Any] | None) -> tuple[str, Any]:
    """The JSON text without a Markdown fence, and its value checked against ``schema``.

    Raises ``OUTPUT_INVALID`` naming the first problem.
    """
    match = JSON_FENCE_RE.match(text)
    body = (match.group(1) if match else text).strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise job_error(ErrorCode.OUTPUT_INVALID, f"not valid JSON: {exc}") from None
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise job_error(ErrorCode.OUTPUT_INVALID, f"{where}: {error.message}")
    return body, data


class _LLMCallError(Exception):
    """One HTTP request to the API failed; translated to a ``JobError`` later."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        retry_after_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        return is_retryable(self.code)


def classify_status_error(exc: anthropic.APIStatusError) -> _LLMCallError:
    """Map an error answer, or an ``error`` event mid-stream, to a code."""
    status = exc.status_code
    error_type = str(exc.type or "")
    message = (exc.api_message or "").strip()
    mid_stream = status < 400
    retry_after = None if mid_stream else parse_retry_after(exc.response.headers)

    if (
        status == 402
        or error_type == "billing_error"
        or exc.error_code in SPEND_LIMIT_ERROR_CODES
        or (status in (400, 429) and SPEND_LIMIT_RE.search(message))
    ):
        code = ErrorCode.LLM_SPEND_LIMIT
    elif status in (401, 403):
        code = ErrorCode.LLM_AUTH_FAILED
    elif status == 529 or error_type == "overloaded_error":
        code = ErrorCode.LLM_OVERLOADED
    elif status == 429:
        code = ErrorCode.LLM_RATE_LIMITED
    elif status == 408:
        code = ErrorCode.LLM_TIMEOUT
    elif status == 413 or PROMPT_TOO_LONG_RE.search(message):
        code = ErrorCode.INPUT_TOO_LONG
    elif mid_stream:
        code = MID_STREAM_ERROR_CODES.get(error_type, ErrorCode.LLM_UNAVAILABLE)
    elif status >= 500:
        code = ErrorCode.LLM_UNAVAILABLE
    else:
        code = ErrorCode.LLM_BAD_REQUEST

    where = "error event mid-stream" if mid_stream else f"HTTP {status}"
    detail = f"{where} {error_type or 'unknown'}"
    if message:
        detail = f"{detail}: {message[:300]}"
    return _LLMCallError(
        code, detail, retry_after_s=retry_after, request_id=exc.request_id
    )


@dataclass
class _Answer:
    """One successful streamed request."""

    text: str
    stop_reason: str | None
    request_id: str | None
    input_tokens: int
    output_tokens: int


class _Accumulator:
    """What one stream has said so far, kept from its raw events.

    The same answer as the SDK's message snapshot, by the same rules: the
    text of the text deltas in the order they come (the API streams one
    block after another), the stop reason from ``message_delta``, and usage
    whose ``message_delta`` counts are cumulative totals that replace those
    of ``message_start`` (the optional ones only when present).
    """

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.stopped = False
        self.chars = 0
        self.stop_reason: str | None = None
        self._text: list[str] = []
        self._input_tokens = 0
        self._cache_creation_tokens = 0
        self._cache_read_tokens = 0
        self._output_tokens = 0

    def add(self, event: Any) -> bool:
        """Take one event; True when it carried text."""
        kind = event.type
        if kind == "content_block_delta":
            if event.delta.type != "text_delta":
                return False
            self._text.append(event.delta.text)
            self.chars += len(event.delta.text)
            return True
        if kind == "message_start":
            usage = event.message.usage
            self._input_tokens = usage.input_tokens or 0
            self._cache_creation_tokens = usage.cache_creation_input_tokens or 0
            self._cache_read_tokens = usage.cache_read_input_tokens or 0
            self._output_tokens = usage.output_tokens or 0
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason
            usage = event.usage
            self._output_tokens = usage.output_tokens or 0
            if usage.input_tokens is not None:
                self._input_tokens = usage.input_tokens
            if usage.cache_creation_input_tokens is not None:
                self._cache_creation_tokens = usage.cache_creation_input_tokens
            if usage.cache_read_input_tokens is not None:
                self._cache_read_tokens = usage.cache_read_input_tokens
        elif kind == "message_stop":
            self.stopped = True
        return False

    def result(self) -> _Answer:
        return _Answer(
            text="".join(self._text),
            stop_reason=self.stop_reason,
            request_id=self.request_id,
            input_tokens=self._input_tokens
            + self._cache_creation_tokens
            + self._cache_read_tokens,
            output_tokens=self._output_tokens,
        )


class _ProgressThrottle:
    """Forwards progress at most once per ``interval_s``."""

    def __init__(self, callback: ProgressCallback, interval_s: float) -> None:
        self._callback = callback
        self._interval_s = interval_s
        self._last = -math.inf

    async def report(self, progress: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        self._last = now
        await self._callback(progress)


@dataclass
class _Run:
    """One ``generate`` call: what it asks for and what it has spent."""

    request: GenerationRequest
    model: str
    deadline: float  # event loop time when the attempt runs out
    progress: _ProgressThrottle
    log: Any
    requests: int = 0
    request_ids: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    output_chars: int = 0  # text of finished requests, for progress

    @property
    def artifact_type(self) -> ArtifactType:
        return self.request.artifact_type


class _StopWhenWaitTooLong(stop_base):
    """Give up instead of sleeping past ``max_wait_s`` or the attempt's end.

    A long wait is the queue's job: the row is released with ``retry_after_s``
    and no slot is held while it waits.
    """

    def __init__(self, max_wait_s: float, deadline: float) -> None:
        self._max_wait_s = max_wait_s
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        remaining = self._deadline - asyncio.get_running_loop().time()
        return retry_state.upcoming_sleep > min(self._max_wait_s, remaining)


@dataclass(frozen=True)
class _Step:
    """One request of the plan: the whole transcript, a part, or the combine."""

    phase: str  # "generating" or "combining"
    part: int
    parts: int
    system: str
    user: str


def _mid_stream_error(answer: _Accumulator, cause: Exception) -> _LLMCallError:
    """A stream that failed after its answer began: a read timeout or a cut."""
    if isinstance(cause, httpx2.TimeoutException):
        return _LLMCallError(
            ErrorCode.LLM_TIMEOUT,
            f"read timed out mid-stream ({type(cause).__name__})",
            request_id=answer.request_id,
        )
    return _LLMCallError(
        ErrorCode.LLM_UNAVAILABLE,
        f"stream cut after {answer.chars} chars ({type(cause).__name__})",
        request_id=answer.request_id,
    )


class AnthropicGenerator:
    """Writes documents with Claude; see the module docstring for the limits.

    Args:
        api_key: sent as a bearer token; kept as a ``SecretStr``.
        base_url: the API root; ``None`` lets the SDK read
            ``ANTHROPIC_BASE_URL`` or use the public API.
        model_override: ``ARTIFACTD_MODEL``; wins over the type's model.
        request_timeout_s: one HTTP request, from sending to the last event.
        stall_timeout_s: the longest gap between stream events.
        attempt_timeout_s: the whole ``generate`` call, retries included.
        max_tries: requests per step (a part, or the combine) before the
            attempt gives up with the last error's code.
        gate: fleet-wide backpressure, awaited before every request.
        context_tokens: the model's context window, for splitting.
        margin_tokens: room left for estimate error; default 2% of
            ``context_tokens``, at least 256.
        max_retry_wait_s: a longer ``retry-after`` ends the attempt at once
            (the queue waits instead, without holding a slot); default 30.
        backoff_initial_s, backoff_max_s: full-jitter exponential backoff
            between tries when the API names no wait; defaults 0.5 and 8.
        progress_interval_s: the least time between progress reports;
            default 0.25.
    """

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str | SecretStr,
        base_url: str | None,
        model_override: str | None,
        request_timeout_s: float,
        stall_timeout_s: float,
        attempt_timeout_s: float,
        max_tries: int = MAX_TRIES,
        gate: LLMGate,
        context_tokens: int = 200_000,
        margin_tokens: int | None = None,
        max_retry_wait_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
    ) -> None:
        if max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        self._api_key = api_key
        self._base_url = base_url
        self._model_override = model_override or None
        self._request_timeout_s = request_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._attempt_timeout_s = attempt_timeout_s
        self._max_tries = max_tries
        self._gate = gate
        self._context_tokens = context_tokens
        if margin_tokens is None:
            margin_tokens = max(256, context_tokens // 50)
        self._margin_tokens = margin_tokens
        self._max_retry_wait_s = max_retry_wait_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._progress_interval_s = progress_interval_s
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key.get_secret_value(),
            base_url=base_url,
            max_retries=0,
            timeout=httpx2.Timeout(
                request_timeout_s, connect=min(10.0, request_timeout_s)
            ),
            http_client=anthropic.DefaultAioHttpClient(),
        )

    def __repr__(self) -> str:
        return (
            f"AnthropicGenerator(base_url={self._base_url!r}, "
            f"model_override={self._model_override!r}, max_tries={self._max_tries})"
        )

    __str__ = __repr__

    async def aclose(self) -> None:
        await self._client.close()

    async def generate(
        self, request: GenerationRequest, report_progress: ProgressCallback
    ) -> GenerationResult:
        """Write the document for ``request`` or raise a ``JobError``."""
        started = time.monotonic()
        artifact_type = request.artifact_type
        if not request.transcript.strip():
            raise job_error(ErrorCode.INPUT_EMPTY)
        model = self._model_override or artifact_type.model
        parts = self._split(request)
        run = _Run(
            request=request,
            model=model,
            deadline=asyncio.get_running_loop().time() + self._attempt_timeout_s,
            progress=_ProgressThrottle(report_progress, self._progress_interval_s),
            log=log.bind(
                artifact_id=request.artifact_id,
                artifact_type=artifact_type.name,
                attempt=request.attempt,
                model=model,
            ),
        )
        if len(parts) > 1:
            run.log.info("llm.transcript_split", parts=len(parts))

        try:
            async with asyncio.timeout(self._attempt_timeout_s):
                answer = await self._run_plan(run, parts)
        except TimeoutError:
            raise job_error(
                ErrorCode.LLM_TIMEOUT, f"attempt exceeded {self._attempt_timeout_s:g} s"
            ) from None

        text, data = answer.text, None
        if artifact_type.format == "json":
            text, data = parse_json_output(answer.text, artifact_type.json_schema)
        metadata = {
            "model": model,
            "stop_reason": answer.stop_reason,
            "request_ids": run.request_ids,
            "usage": {
                "input_tokens": run.input_tokens,
                "output_tokens": run.output_tokens,
            },
            "parts": len(parts),
            "requests": run.requests,
            "duration_ms": round((time.monotonic() - started) * 1000),
        }

        return GenerationResult(
            format=artifact_type.format, text=text, data=data, metadata=metadata
        )

    # -- planning ------------------------------------------------------------

    def _budget(self, artifact_type: ArtifactType) -> int:
        """Prompt tokens one request may use: the window less output and margin."""
        return self._context_tokens - artifact_type.max_tokens - self._margin_tokens

    def _split(self, request: GenerationRequest) -> list[str]:
        """The transcript as one part if it fits, else line-aligned parts that do.

        Raises ``INPUT_TOO_LONG`` when one line alone, or a combine request
        over the worst-case part outputs, would not fit; before any request
        is spent.
        """
        artifact_type = request.artifact_type
        budget = self._budget(artifact_type)
        whole = estimate_tokens(artifact_type.system_prompt) + estimate_tokens(
            request.render_user_prompt()
        )
        if whole <= budget:
            return [request.transcript]

        part_note = PART_NOTE.format(part=9999, parts=9999)
        overhead = estimate_tokens(artifact_type.system_prompt + part_note)
        capacity = budget - overhead - estimate_tokens(request.render_user_prompt(""))
        parts: list[str] = []
        lines: list[str] = []
        used = 0
        for line in request.transcript.splitlines(keepends=True):
            tokens = estimate_tokens(line)
            if tokens > capacity:
                raise job_error(
                    ErrorCode.INPUT_TOO_LONG,
                    f"one line needs ~{tokens} tokens; a part has room for "
                    f"{max(capacity, 0)}",
                )
            if used + tokens > capacity and lines:
                parts.append("".join(lines))
                lines, used = [], 0
            lines.append(line)
            used += tokens
        parts.append("".join(lines))
        parts = [part for part in parts if part.strip()]

        header = estimate_tokens(PART_HEADER.format(part=9999, parts=9999))
        combine_need = (
            estimate_tokens(artifact_type.system_prompt + COMBINE_NOTE)
            + estimate_tokens(request.render_user_prompt(""))
            + len(parts) * (artifact_type.max_tokens + header)
        )
        if combine_need > budget:
            raise job_error(
                ErrorCode.INPUT_TOO_LONG,
                f"{len(parts)} parts would not fit one combine request "
                f"(~{combine_need} of {budget} tokens)",
            )
        return parts

    async def _run_plan(self, run: _Run, parts: list[str]) -> _Answer:
        """One request for a transcript that fits; else each part, then combine."""
        request, artifact_type = run.request, run.artifact_type
        count = len(parts)
        if count == 1:
            step = _Step(
                phase="generating",
                part=1,
                parts=1,
                system=artifact_type.system_prompt,
                user=request.render_user_prompt(),
            )
            return await self._request(run, step)

        outputs: list[str] = []
        for index, part in enumerate(parts, start=1):
            step = _Step(
                phase="generating",
                part=index,
                parts=count,
                system=artifact_type.system_prompt
                + PART_NOTE.format(part=index, parts=count),
                user=request.render_user_prompt(part),
            )
            answer = await self._request(run, step)
            outputs.append(
                PART_HEADER.format(part=index, parts=count) + answer.text.strip()
            )

        step = _Step(
            phase="combining",
            part=count,
            parts=count,
            system=artifact_type.system_prompt + COMBINE_NOTE,
            user=request.render_user_prompt("\n\n".join(outputs)),
        )
        need = estimate_tokens(step.system) + estimate_tokens(step.user)
        if need > self._budget(artifact_type):
            raise job_error(
                ErrorCode.INPUT_TOO_LONG,
                f"the part documents need ~{need} tokens to combine; "
                f"{self._budget(artifact_type)} fit",
            )
        return await self._request(run, step)

    # -- one step, retried ---------------------------------------------------

    async def _request(self, run: _Run, step: _Step) -> _Answer:
        """Send one step, retrying transient failures up to ``max_tries`` times."""

        async def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _LLMCallError):
                run.log.warning(
                    "llm.request_failed",
                    error_code=exc.code.value,
                    error=self._scrub(exc.detail),
                    request_id=exc.request_id,
                    part=step.part,
                    try_number=state.attempt_number,
                    retry_in_s=round(state.upcoming_sleep, 3),
                )

        retrying = AsyncRetrying(
            stop=stop_any(
                stop_after_attempt(self._max_tries),
                _StopWhenWaitTooLong(self._max_retry_wait_s, run.deadline),
            ),
            wait=self._wait,
            retry=retry_if_exception(
                lambda exc: isinstance(exc, _LLMCallError) and exc.retryable
            ),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send(run, step)
        except _LLMCallError as exc:
            detail = self._scrub(exc.detail)
            if exc.request_id:
                detail = f"{detail} (request_id={exc.request_id})"
            run.log.warning(
                "llm.request_failed",
                error_code=exc.code.value,
                error=detail,
                part=step.part,
                retry_in_s=None,
            )
            raise job_error(exc.code, detail, retry_after_s=exc.retry_after_s) from exc
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        """Honour ``retry-after`` (plus a little jitter), else full-jitter backoff."""
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after_s if isinstance(exc, _LLMCallError) else None
        if retry_after is not None:
            # Jitter, so a fleet paused by one 429 does not resume in lockstep.
            return retry_after + random.uniform(0, min(1.0, 0.1 * retry_after))
        ceiling = self._backoff_initial_s * 2 ** (state.attempt_number - 1)
        return random.uniform(0, min(self._backoff_max_s, ceiling))

    async def _send(self, run: _Run, step: _Step) -> _Answer:
        """One HTTP request: wait for the gate, stream, check the stop reason."""
        await self._gate.wait_open()
        run.requests += 1
        try:
            answer = await self._stream(run, step)
        except _LLMCallError as exc:
            if exc.request_id:
                run.request_ids.append(exc.request_id)
            await self._pause_fleet(run, exc)
            raise

        if answer.request_id:
            run.request_ids.append(answer.request_id)
        run.input_tokens += answer.input_tokens
        run.output_tokens += answer.output_tokens
        run.output_chars += len(answer.text)
        if answer.stop_reason in TRUNCATING_STOP_REASONS:
            raise _LLMCallError(
                ErrorCode.OUTPUT_TRUNCATED,
                f"stop_reason {answer.stop_reason} with max_tokens "
                f"{run.artifact_type.max_tokens}",
                request_id=answer.request_id,
            )
        if answer.stop_reason == "refusal":
            raise _LLMCallError(
                ErrorCode.OUTPUT_REFUSED,
                "stop_reason refusal",
                request_id=answer.request_id,
            )
        return answer

    async def _pause_fleet(self, run: _Run, exc: _LLMCallError) -> None:
        """A 429 or 529 that names its wait stops every worker from sending."""
        if exc.code not in (ErrorCode.LLM_RATE_LIMITED, ErrorCode.LLM_OVERLOADED):
            return
        if not exc.retry_after_s:
            return
        run.log.warning(
            "llm.fleet_paused",
            error_code=exc.code.value,
            pause_s=exc.retry_after_s,
            request_id=exc.request_id,
        )
        await self._gate.pause(exc.retry_after_s, exc.code.value)

    async def _stream(self, run: _Run, step: _Step) -> _Answer:
        """Stream one request under the request and stall timeouts."""
        loop = asyncio.get_running_loop()
        answer = _Accumulator()
        begun = False  # the status line is in; what fails now fails mid-stream
        try:
            async with asyncio.timeout(self._request_timeout_s):
                # The raw events, not ``messages.stream()``: see the module
                # docstring.
                stream = await self._client.messages.create(
                    model=run.model,
                    max_tokens=run.artifact_type.max_tokens,
                    system=step.system,
                    messages=[{"role": "user", "content": step.user}],
                    stream=True,
                )
                begun = True
                answer.request_id = stream.response.headers.get("request-id")
                # The stall clock starts once the answer has begun; the wait
                # for the status line is the request timeout's.
                stall = asyncio.timeout(loop.time() + self._stall_timeout_s)
                try:
                    async with stream, stall:
                        async for event in stream:
                            stall.reschedule(loop.time() + self._stall_timeout_s)
                            if answer.add(event):
                                await run.progress.report(
                                    {
                                        "phase": step.phase,
                                        "output_chars": run.output_chars + answer.chars,
                                        "part": step.part,
                                        "parts": step.parts,
                                    }
                                )
                                # A slow progress write is not a stall.
                                stall.reschedule(loop.time() + self._stall_timeout_s)
                except TimeoutError:
                    if not stall.expired():
                        raise
                    raise _LLMCallError(
                        ErrorCode.LLM_STREAM_STALLED,
                        f"no stream event for {self._stall_timeout_s:g} s "
                        f"after {answer.chars} chars",
                        request_id=answer.request_id,
                    ) from None
                if not answer.stopped:
                    raise _LLMCallError(
                        ErrorCode.LLM_UNAVAILABLE,
                        f"stream ended without message_stop after {answer.chars} chars",
                        request_id=answer.request_id,
                    )
        except TimeoutError:
            raise _LLMCallError(
                ErrorCode.LLM_TIMEOUT,
                f"no complete answer within {self._request_timeout_s:g} s",
                request_id=answer.request_id,
            ) from None
        except anthropic.APIStatusError as exc:
            raise classify_status_error(exc) from exc
        except anthropic.APIConnectionError as exc:
            # Before the answer began: the request never got through. After
            # it (SDK 2.17 and later wrap a failed body read this way, with
            # the httpx2 error as the cause): the stream was cut.
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            if begun:
                raise _mid_stream_error(answer, cause) from exc
            if isinstance(exc, anthropic.APITimeoutError):
                raise _LLMCallError(
                    ErrorCode.LLM_TIMEOUT, "HTTP client timed out"
                ) from exc
            reason = type(cause).__name__ if cause is not exc else "connection error"
            raise _LLMCallError(
                ErrorCode.LLM_UNAVAILABLE, f"cannot reach the API ({reason})"
            ) from exc
        except httpx2.TransportError as exc:
            # SDK 2.16 and earlier let a failed body read out of httpx2 bare.
            raise _mid_stream_error(answer, exc) from exc
        return answer.result()

    def _scrub(self, text: str) -> str:
        """Belt and braces: no error detail may carry the key."""
        key = self._api_key.get_secret_value()
        return text.replace(key, "[redacted]") if key else text
