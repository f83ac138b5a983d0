"""The anthropic generator, run with the real SDK against the fake Messages API.

No database is involved. Each test scripts the fake server, runs one
``generate`` call in its own event loop and checks the code, the requests
the server saw and the result's metadata.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import time
from typing import Any

import pytest

from shared.artifact_types import ArtifactType
from shared.errors import ErrorCode, JobError, PermanentJobError, RetryableJobError
from tests.fakes.messages_server import (
    FakeMessagesServer,
    RecordedRequest,
    Reply,
    answer,
    bad_request,
    credit_exhausted,
    delayed,
    drop,
    error_event,
    forbidden,
    http_error,
    overloaded,
    rate_limited,
    refusal,
    server_error,
    spend_limited,
    stall,
    truncated,
    unauthorized,
)
from worker.generators.anthropic import (
    AnthropicGenerator,
    estimate_tokens,
    parse_retry_after,
)
from worker.generators.base import GenerationRequest, GenerationResult, no_progress

API_KEY = "sk-ant-test-7f3c9a1e5b2d4c6e8a0b"
TRANSCRIPT = "Alice: we ship on Friday.\nBob: I will write the release notes.\n"

MINUTES = ArtifactType(
    name="meeting_minutes",
    title={"en": "Meeting minutes"},
    model="claude-test-model",
    max_tokens=256,
    system_prompt="You write meeting minutes in Markdown.",
    user_template="Meeting {task_name}\n\nTranscript:\n{transcript}",
)
ACTION_ITEMS = ArtifactType(
    name="action_items",
    title={"en": "Action items"},
    model="claude-test-model",
    max_tokens=256,
    system_prompt="You list action items as JSON.",
    user_template="Transcript:\n{transcript}",
    format="json",
    json_schema={
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["owner", "task"],
                    "properties": {
                        "owner": {"type": "string"},
                        "task": {"type": "string"},
                    },
                },
            }
        },
    },
)


class RecordingGate:
    """An always-open gate that remembers the pauses it was asked for."""

    def __init__(self) -> None:
        self.waits = 0
        self.pauses: list[tuple[float, str]] = []

    async def wait_open(self) -> None:
        self.waits += 1

    async def pause(self, seconds: float, reason: str) -> None:
        self.pauses.append((seconds, reason))


@pytest.fixture(scope="module")
def shared_server() -> Any:
    with FakeMessagesServer() as server:
        yield server


@pytest.fixture
def server(shared_server: FakeMessagesServer) -> FakeMessagesServer:
    shared_server.reset()
    return shared_server


def make_request(
    transcript: str = TRANSCRIPT, artifact_type: ArtifactType = MINUTES
) -> GenerationRequest:
    return GenerationRequest(
        artifact_id="00000000-0000-0000-0000-000000000001",
        task_id="task-1",
        task_name="Weekly sync",
        meeting_time=None,
        language="en",
        transcript=transcript,
        artifact_type=artifact_type,
        locale="en",
        attempt=1,
    )


def make_generator(server: FakeMessagesServer, **options: Any) -> AnthropicGenerator:
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": server.base_url,
        "model_override": None,
        "request_timeout_s": 5.0,
        "stall_timeout_s": 2.0,
        "attempt_timeout_s": 20.0,
        "max_tries": 3,
        "gate": RecordingGate(),
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    settings.update(options)
    return AnthropicGenerator(**settings)


def generate(
    server: FakeMessagesServer,
    *,
    transcript: str = TRANSCRIPT,
    artifact_type: ArtifactType = MINUTES,
    progress: list[dict[str, Any]] | None = None,
    **options: Any,
) -> GenerationResult:
    async def report(update: dict[str, Any]) -> None:
        assert progress is not None
        progress.append(update)

    async def main() -> GenerationResult:
        generator = make_generator(server, **options)
        try:
            return await generator.generate(
                make_request(transcript, artifact_type),
                report if progress is not None else no_progress,
            )
        finally:
            await generator.aclose()

    return asyncio.run(main())


def generate_error(server: FakeMessagesServer, **kwargs: Any) -> JobError:
    with pytest.raises(JobError) as info:
        generate(server, **kwargs)
    return info.value


# -- success ----------------------------------------------------------------


def test_generate__streams_the_answer_and_records_metadata(
    server: FakeMessagesServer,
) -> None:
    server.script(answer("# Minutes\n\n- Ship on Friday.\n"))

    result = generate(server)

    [seen] = server.requests
    assert result.format == "markdown"
    assert result.text == "# Minutes\n\n- Ship on Friday.\n"
    assert result.data is None
    assert result.metadata["model"] == "claude-test-model"
    assert result.metadata["stop_reason"] == "end_turn"
    assert result.metadata["request_ids"] == [seen.request_id]
    assert result.metadata["usage"]["input_tokens"] > 0
    assert result.metadata["usage"]["output_tokens"] > 0
    assert result.metadata["parts"] == 1
    assert result.metadata["requests"] == 1
    assert result.metadata["duration_ms"] >= 0


def test_generate__sends_bearer_key_and_no_sampling_parameters(
    server: FakeMessagesServer,
) -> None:
    generate(server)

    [seen] = server.requests
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-api-key" not in seen.headers
    assert seen.headers["anthropic-version"]
    assert seen.body["stream"] is True
    assert not {"temperature", "top_p", "top_k"} & set(seen.body)
    assert seen.body["model"] == "claude-test-model"
    assert seen.body["max_tokens"] == MINUTES.max_tokens
    assert seen.system == MINUTES.system_prompt
    assert TRANSCRIPT in seen.user_text
    assert "Meeting Weekly sync" in seen.user_text


def test_generate__model_override_wins_over_the_types_model(
    server: FakeMessagesServer,
) -> None:
    result = generate(server, model_override="claude-override")

    assert server.requests[0].body["model"] == "claude-override"
    assert result.metadata["model"] == "claude-override"


def test_generate__waits_on_the_gate_before_every_request(
    server: FakeMessagesServer,
) -> None:
    gate = RecordingGate()
    server.script(server_error(), answer())

    generate(server, gate=gate)

    assert gate.waits == len(server.requests) == 2


def test_generate__reports_progress_at_most_every_interval(
    server: FakeMessagesServer,
) -> None:
    text = "x" * 400
    server.script(answer(text, chunk_chars=10, chunk_interval_s=0.02))
    progress: list[dict[str, Any]] = []

    started = time.monotonic()
    generate(server, progress=progress, progress_interval_s=0.25)
    elapsed_s = time.monotonic() - started

    assert 1 <= len(progress) <= 1 + elapsed_s / 0.25
    assert len(progress) < 40  # fewer reports than text deltas
    assert progress[0] == {
        "phase": "generating",
        "output_chars": 10,
        "part": 1,
        "parts": 1,
    }
    chars = [update["output_chars"] for update in progress]
    assert chars == sorted(chars)
    assert chars[-1] <= len(text)


# -- retries and backpressure -------------------------------------------------


def test_generate__retries_a_transient_error_then_succeeds(
    server: FakeMessagesServer,
) -> None:
    server.script(server_error(), answer("# Done\n"))

    result = generate(server)

    assert result.text == "# Done\n"
    assert len(server.requests) == 2
    assert result.metadata["requests"] == 2
    assert result.metadata["request_ids"] == [r.request_id for r in server.requests]


def test_generate__stops_after_max_tries_requests(server: FakeMessagesServer) -> None:
    server.script(*[server_error()] * 5)

    error = generate_error(server, max_tries=3)

    assert error.code is ErrorCode.LLM_UNAVAILABLE
    assert isinstance(error, RetryableJobError)
    assert len(server.requests) == 3


def test_generate__429_without_retry_after_is_rate_limited_and_does_not_pause(
    server: FakeMessagesServer,
) -> None:
    gate = RecordingGate()
    server.script(*[rate_limited()] * 3)

    error = generate_error(server, gate=gate, max_tries=3)

    assert error.code is ErrorCode.LLM_RATE_LIMITED
    assert isinstance(error, RetryableJobError)
    assert len(server.requests) == 3
    assert gate.pauses == []


def test_generate__429_retry_after_pauses_the_fleet_and_delays_the_next_request(
    server: FakeMessagesServer,
) -> None:
    gate = RecordingGate()
    server.script(rate_limited(retry_after=1), answer("# Later\n"))

    result = generate(server, gate=gate)

    first, second = server.requests
    assert result.text == "# Later\n"
    assert gate.pauses == [(1.0, "LLM_RATE_LIMITED")]
    assert second.received_at - first.received_at >= 1.0


def test_generate__long_retry_after_ends_the_attempt_for_the_queue_to_wait(
    server: FakeMessagesServer,
) -> None:
    gate = RecordingGate()
    server.script(rate_limited(retry_after=120))

    error = generate_error(server, gate=gate, max_retry_wait_s=30)

    assert error.code is ErrorCode.LLM_RATE_LIMITED
    assert error.retry_after_s == 120
    assert len(server.requests) == 1
    assert gate.pauses == [(120.0, "LLM_RATE_LIMITED")]


def test_generate__529_is_overloaded_and_pauses_when_it_names_a_wait(
    server: FakeMessagesServer,
) -> None:
    gate = RecordingGate()
    server.script(overloaded(retry_after=60))

    error = generate_error(server, gate=gate)

    assert error.code is ErrorCode.LLM_OVERLOADED
    assert isinstance(error, RetryableJobError)
    assert gate.pauses == [(60.0, "LLM_OVERLOADED")]


def test_generate__529_every_time_is_overloaded_after_max_tries(
    server: FakeMessagesServer,
) -> None:
    server.script(*[overloaded()] * 3)

    error = generate_error(server, max_tries=3)

    assert error.code is ErrorCode.LLM_OVERLOADED
    assert len(server.requests) == 3


def test_parse_retry_after__reads_seconds_milliseconds_and_http_dates() -> None:
    in_ten_s = email.utils.formatdate(time.time() + 10, usegmt=True)

    from_date = parse_retry_after({"retry-after": in_ten_s})

    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert from_date is not None and 5 <= from_date <= 10
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# -- error codes ----------------------------------------------------------------


def test_generate__spend_limit_429_fails_at_once_without_pausing(
    server: FakeMessagesServer,
) -> None:
    gate = RecordingGate()
    server.script(spend_limited())

    error = generate_error(server, gate=gate)

    assert error.code is ErrorCode.LLM_SPEND_LIMIT
    assert isinstance(error, PermanentJobError)
    assert len(server.requests) == 1
    assert gate.pauses == []


def test_generate__credit_balance_too_low_400_is_spend_limit(
    server: FakeMessagesServer,
) -> None:
    server.script(credit_exhausted())

    error = generate_error(server)

    assert error.code is ErrorCode.LLM_SPEND_LIMIT
    assert len(server.requests) == 1


@pytest.mark.parametrize("reply", [unauthorized(), forbidden()], ids=["401", "403"])
def test_generate__401_and_403_are_auth_failed(
    server: FakeMessagesServer, reply: Reply
) -> None:
    server.script(reply)

    error = generate_error(server)

    assert error.code is ErrorCode.LLM_AUTH_FAILED
    assert isinstance(error, PermanentJobError)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "reply", [bad_request(), http_error(404, "model: not found")], ids=["400", "404"]
)
def test_generate__other_4xx_is_bad_request(
    server: FakeMessagesServer, reply: Reply
) -> None:
    server.script(reply)

    error = generate_error(server)

    assert error.code is ErrorCode.LLM_BAD_REQUEST
    assert isinstance(error, PermanentJobError)
    assert len(server.requests) == 1


def test_generate__prompt_too_long_400_is_input_too_long(
    server: FakeMessagesServer,
) -> None:
    server.script(bad_request("prompt is too long: 210000 tokens > 200000 maximum"))

    error = generate_error(server)

    assert error.code is ErrorCode.INPUT_TOO_LONG


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("overloaded_error", ErrorCode.LLM_OVERLOADED),
        ("rate_limit_error", ErrorCode.LLM_RATE_LIMITED),
        ("api_error", ErrorCode.LLM_UNAVAILABLE),
        ("invalid_request_error", ErrorCode.LLM_BAD_REQUEST),
    ],
)
def test_generate__error_event_mid_stream_is_mapped_by_its_type(
    server: FakeMessagesServer, error_type: str, code: ErrorCode
) -> None:
    server.script(error_event(error_type, "something went wrong", after_chunks=2))

    error = generate_error(server, max_tries=1)

    assert error.code is code
    assert "mid-stream" in (error.detail or "")
    assert len(server.requests) == 1


def test_generate__500_is_unavailable(server: FakeMessagesServer) -> None:
    server.script(server_error())

    error = generate_error(server, max_tries=1)

    assert error.code is ErrorCode.LLM_UNAVAILABLE
    assert "HTTP 500" in (error.detail or "")


def test_generate__connection_refused_is_unavailable(
    server: FakeMessagesServer,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    error = generate_error(
        server, base_url=f"http://127.0.0.1:{closed_port}", max_tries=2
    )

    assert error.code is ErrorCode.LLM_UNAVAILABLE
    assert isinstance(error, RetryableJobError)
    # Not taken for a cut stream: the SDK (2.17 and later) raises the same
    # error type for both, and only the stream having begun tells them apart.
    assert "cannot reach the API (ConnectError)" in (error.detail or "")


def test_generate__stream_cut_mid_way_is_unavailable(
    server: FakeMessagesServer,
) -> None:
    server.script(drop(after_chunks=2))

    error = generate_error(server, max_tries=1)

    assert error.code is ErrorCode.LLM_UNAVAILABLE
    assert "stream cut" in (error.detail or "")


def test_generate__answer_slower_than_the_request_timeout_is_llm_timeout(
    server: FakeMessagesServer,
) -> None:
    server.script(delayed(3), delayed(3))

    error = generate_error(server, request_timeout_s=0.3, max_tries=2)

    assert error.code is ErrorCode.LLM_TIMEOUT
    assert isinstance(error, RetryableJobError)
    assert len(server.requests) == 2


def test_generate__attempt_longer_than_its_limit_is_llm_timeout(
    server: FakeMessagesServer,
) -> None:
    server.script(delayed(3))

    error = generate_error(server, attempt_timeout_s=0.5)

    assert error.code is ErrorCode.LLM_TIMEOUT
    assert "attempt" in (error.detail or "")
    assert len(server.requests) == 1


def test_generate__stream_that_stops_producing_is_stalled(
    server: FakeMessagesServer,
) -> None:
    server.script(stall(3, after_chunks=1))

    error = generate_error(server, stall_timeout_s=0.3, max_tries=1)

    assert error.code is ErrorCode.LLM_STREAM_STALLED
    assert isinstance(error, RetryableJobError)


def test_generate__max_tokens_stop_is_output_truncated(
    server: FakeMessagesServer,
) -> None:
    server.script(truncated())

    error = generate_error(server)

    assert error.code is ErrorCode.OUTPUT_TRUNCATED
    assert isinstance(error, PermanentJobError)
    assert len(server.requests) == 1


def test_generate__refusal_stop_is_output_refused(server: FakeMessagesServer) -> None:
    server.script(refusal())

    error = generate_error(server)

    assert error.code is ErrorCode.OUTPUT_REFUSED
    assert len(server.requests) == 1


def test_generate__json_in_a_fence_is_parsed_and_validated(
    server: FakeMessagesServer,
) -> None:
    server.script(
        answer('```json\n{"items": [{"owner": "Bob", "task": "notes"}]}\n```')
    )

    result = generate(server, artifact_type=ACTION_ITEMS)

    assert result.format == "json"
    assert result.data == {"items": [{"owner": "Bob", "task": "notes"}]}
    assert result.text == '{"items": [{"owner": "Bob", "task": "notes"}]}'


def test_generate__json_failing_the_schema_is_output_invalid(
    server: FakeMessagesServer,
) -> None:
    server.script(answer('{"items": [{"owner": "Bob"}]}'))

    error = generate_error(server, artifact_type=ACTION_ITEMS)

    assert error.code is ErrorCode.OUTPUT_INVALID
    assert "items/0" in (error.detail or "")
    assert "'task' is a required property" in (error.detail or "")


def test_generate__text_that_is_not_json_is_output_invalid(
    server: FakeMessagesServer,
) -> None:
    server.script(answer("Here are the items: Bob writes notes."))

    error = generate_error(server, artifact_type=ACTION_ITEMS)

    assert error.code is ErrorCode.OUTPUT_INVALID
    assert "not valid JSON" in (error.detail or "")


def test_generate__blank_transcript_is_input_empty_without_a_request(
    server: FakeMessagesServer,
) -> None:
    error = generate_error(server, transcript=" \n\t\n")

    assert error.code is ErrorCode.INPUT_EMPTY
    assert server.requests == []


def test_generate__key_appears_in_no_error_and_no_repr(
    server: FakeMessagesServer,
) -> None:
    server.script(http_error(400, f"malformed header: Bearer {API_KEY}"))

    error = generate_error(server)
    generator = make_generator(server)

    assert error.code is ErrorCode.LLM_BAD_REQUEST
    assert API_KEY not in str(error)
    assert API_KEY not in (error.detail or "")
    assert "[redacted]" in (error.detail or "")
    assert API_KEY not in repr(generator)
    assert API_KEY not in str(generator)
    assert API_KEY not in repr(vars(generator))
    asyncio.run(generator.aclose())


# -- long transcripts ---------------------------------------------------------

SMALL_WINDOW = ArtifactType(
    name="summary",
    title={"en": "Summary"},
    model="claude-test-model",
    max_tokens=30,
    system_prompt="Summarise.",
    user_template="Transcript:\n{transcript}",
)
LONG_TRANSCRIPT = "".join(
    f"Speaker {i % 3}: item {i:02d} was discussed and then agreed on.\n"
    for i in range(30)
)


def answer_by_part(record: RecordedRequest) -> Reply:
    match = re.search(r"part (\d+) of (\d+)", record.system)
    if match:
        return answer(f"- notes for part {match.group(1)}")
    return answer("# Whole meeting\n\n- combined\n")


def test_generate__long_transcript_is_generated_in_parts_then_combined(
    server: FakeMessagesServer,
) -> None:
    server.responder = answer_by_part
    progress: list[dict[str, Any]] = []
    assert estimate_tokens(LONG_TRANSCRIPT) > 300  # does not fit the window below

    result = generate(
        server,
        transcript=LONG_TRANSCRIPT,
        artifact_type=SMALL_WINDOW,
        context_tokens=300,
        margin_tokens=0,
        progress=progress,
        progress_interval_s=0,
    )

    parts = result.metadata["parts"]
    *part_requests, combine = server.requests
    assert parts >= 2
    assert len(part_requests) == parts
    assert result.metadata["requests"] == parts + 1
    assert result.text == "# Whole meeting\n\n- combined\n"
    sent = "".join(r.user_text.removeprefix("Transcript:\n") for r in part_requests)
    assert sent == LONG_TRANSCRIPT
    for index in range(1, parts + 1):
        assert f"- notes for part {index}" in combine.user_text
    assert all(r.body["max_tokens"] == SMALL_WINDOW.max_tokens for r in server.requests)
    assert {u["part"] for u in progress if u["phase"] == "generating"} == set(
        range(1, parts + 1)
    )
    assert progress[-1]["phase"] == "combining"
    assert all(u["parts"] == parts for u in progress)


def test_generate__failing_part_stops_the_attempt_within_the_bound(
    server: FakeMessagesServer,
) -> None:
    server.script(answer("- part one"), *[server_error()] * 3)

    error = generate_error(
        server,
        transcript=LONG_TRANSCRIPT,
        artifact_type=SMALL_WINDOW,
        context_tokens=300,
        margin_tokens=0,
        max_tries=3,
    )

    assert error.code is ErrorCode.LLM_UNAVAILABLE
    assert len(server.requests) == 1 + 3


def test_generate__line_longer_than_any_part_is_input_too_long(
    server: FakeMessagesServer,
) -> None:
    transcript = "short line\n" + "word " * 400 + "\n"

    error = generate_error(
        server,
        transcript=transcript,
        artifact_type=SMALL_WINDOW,
        context_tokens=300,
        margin_tokens=0,
    )

    assert error.code is ErrorCode.INPUT_TOO_LONG
    assert server.requests == []


def test_generate__parts_too_many_to_combine_is_input_too_long(
    server: FakeMessagesServer,
) -> None:
    transcript = LONG_TRANSCRIPT * 20

    error = generate_error(
        server,
        transcript=transcript,
        artifact_type=SMALL_WINDOW,
        context_tokens=300,
        margin_tokens=0,
    )

    assert error.code is ErrorCode.INPUT_TOO_LONG
    assert "combine" in (error.detail or "")
    assert server.requests == []


def test_estimate_tokens__counts_cjk_per_character_and_latin_by_length() -> None:
    assert estimate_tokens("会议纪要") == 4
    assert estimate_tokens("a" * 35) == 10
    assert estimate_tokens("") == 0
