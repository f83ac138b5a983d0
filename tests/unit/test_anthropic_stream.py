"""What the anthropic generator keeps from a stream's raw events.

The generator reads ``messages.create(stream=True)`` events itself instead of
through the SDK's ``messages.stream()`` helper, so it must keep the same
answer that helper's snapshot would: the text, the stop reason, and usage by
the API's rules (``message_delta`` counts are cumulative totals that replace
those of ``message_start``; the optional ones only when present). The events
here are the SDK's own types, built from the JSON the API sends.
"""

from __future__ import annotations

from typing import Any

from anthropic.types import (
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)

from worker.generators.anthropic import _Accumulator

EVENT_TYPES = {
    "message_start": RawMessageStartEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
}


def event(data: dict[str, Any]) -> Any:
    return EVENT_TYPES[data["type"]].model_validate(data)


def message_start(**usage: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test-model",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0, **usage},
        },
    }


def text_block(index: int) -> dict[str, Any]:
    return {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "text", "text": ""},
    }


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str, **usage: int) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage,
    }


def feed(*events: dict[str, Any]) -> tuple[_Accumulator, list[bool]]:
    accumulator = _Accumulator()
    said = [accumulator.add(event(data)) for data in events]
    return accumulator, said


def test_accumulator__keeps_the_text_stop_reason_and_usage_of_a_whole_answer():
    accumulator, said = feed(
        message_start(
            input_tokens=100,
            cache_creation_input_tokens=10,
            cache_read_input_tokens=5,
            output_tokens=1,
        ),
        text_block(0),
        text_delta(0, "# Minutes"),
        text_delta(0, "\n\n- Ship on Friday."),
        block_stop(0),
        message_delta("end_turn", output_tokens=42),
        {"type": "message_stop"},
    )

    answer = accumulator.result()
    assert said == [False, False, True, True, False, False, False]
    assert accumulator.stopped
    assert accumulator.chars == len("# Minutes\n\n- Ship on Friday.")
    assert answer.text == "# Minutes\n\n- Ship on Friday."
    assert answer.stop_reason == "end_turn"
    # message_delta named no input counts: message_start's stand.
    assert answer.input_tokens == 100 + 10 + 5
    assert answer.output_tokens == 42


def test_accumulator__cumulative_counts_in_message_delta_replace_the_first_ones():
    accumulator, _ = feed(
        message_start(
            input_tokens=100, cache_creation_input_tokens=10, cache_read_input_tokens=5
        ),
        text_block(0),
        text_delta(0, "x"),
        message_delta(
            "max_tokens", input_tokens=120, cache_read_input_tokens=30, output_tokens=7
        ),
    )

    answer = accumulator.result()
    assert answer.input_tokens == 120 + 10 + 30
    assert answer.output_tokens == 7
    assert answer.stop_reason == "max_tokens"
    assert not accumulator.stopped  # no message_stop yet


def test_accumulator__joins_text_blocks_in_order_and_counts_only_text():
    accumulator, said = feed(
        message_start(input_tokens=3),
        text_block(0),
        text_delta(0, "one "),
        block_stop(0),
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "lookup",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"q": 1}'},
        },
        block_stop(1),
        text_block(2),
        text_delta(2, "two"),
        block_stop(2),
        message_delta("end_turn", output_tokens=5),
        {"type": "message_stop"},
    )

    assert accumulator.result().text == "one two"
    assert accumulator.chars == len("one two")
    assert said.count(True) == 2


def test_accumulator__an_empty_stream_has_said_nothing():
    accumulator = _Accumulator()

    answer = accumulator.result()
    assert not accumulator.stopped
    assert (answer.text, answer.stop_reason, answer.request_id) == ("", None, None)
    assert (answer.input_tokens, answer.output_tokens) == (0, 0)
