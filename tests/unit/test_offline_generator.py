"""The offline generator on real meetings, plus its siblings: echo and the factory."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shared.artifact_types import ArtifactType, load_artifact_types
from shared.errors import ConfigurationError, ErrorCode, JobError
from shared.transcript import Transcript, read_transcripts
from worker.generators import GENERATOR_NAMES, get_generator
from worker.generators.base import GenerationRequest, GenerationResult, no_progress
from worker.generators.echo import EchoGenerator, minimal_instance
from worker.generators.offline import OfflineGenerator

MEETINGS = Path(str(resources.files("worker") / "meetings"))
TYPES = load_artifact_types()


def _meeting(filename: str, index: int = 0) -> Transcript:
    return read_transcripts(MEETINGS / filename)[index]


def _request(
    transcript: str,
    type_name: str = "meeting_minutes",
    *,
    name: str = "Weekly sync",
    language: str | None = None,
    meeting_time: datetime | None = None,
    locale: str = "en",
    artifact_type: ArtifactType | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        artifact_id="00000000-0000-0000-0000-000000000001",
        task_id="task-1",
        task_name=name,
        meeting_time=meeting_time,
        language=language,
        transcript=transcript,
        artifact_type=artifact_type or TYPES[type_name],
        locale=locale,
        attempt=1,
    )


def _generate(request: GenerationRequest, generator: Any = None) -> GenerationResult:
    generator = generator or OfflineGenerator()
    return asyncio.run(generator.generate(request, no_progress))


def _from_meeting(meeting: Transcript, type_name: str) -> GenerationResult:
    request = _request(
        meeting.text, type_name, name=meeting.name, language=meeting.language
    )
    return _generate(request)


def _section(markdown: str, heading: str) -> str:
    """The body under ``## heading`` up to the next heading or rule."""
    body = markdown.split(f"## {heading}\n", 1)[1]
    return body.split("\n## ", 1)[0].split("\n---", 1)[0]


# --- minutes on real meetings ---------------------------------------------------------


def test_minutes__ami_es2005a_are_about_the_remote_control():
    meeting = _meeting("ami-ES2005a.json")

    result = _from_meeting(meeting, "meeting_minutes")

    text = result.text
    assert result.format == "markdown"
    assert result.data is None
    assert text.startswith("# Meeting minutes: ami-ES2005a\n")
    for heading in ("Participants", "Key points", "Decisions", "Action items"):
        assert f"\n## {heading}\n" in text
    participants = _section(text, "Participants")
    for role in (
        "Project Manager",
        "Marketing",
        "User Interface",
        "Industrial Designer",
    ):
        assert f"- {role}: " in participants
    assert "remote control" in _section(text, "Key points")
    actions = _section(text, "Action items")
    assert "- [ ] **Marketing**: You look at competition and design." in actions
    assert "{vocalsound}" not in text and "{disfmarker}" not in text


def test_minutes__count_each_speakers_turns():
    raw = json.loads((MEETINGS / "ami-ES2005a.json").read_text("utf-8"))
    meeting = _meeting("ami-ES2005a.json")
    turns_by_speaker = {line.split(": ", 1)[0]: 0 for line in meeting.text.split("\n")}
    for line in meeting.text.split("\n"):
        turns_by_speaker[line.split(": ", 1)[0]] += 1

    result = _from_meeting(meeting, "meeting_minutes")

    participants = _section(result.text, "Participants")
    for speaker, turns in turns_by_speaker.items():
        assert f"- {speaker}: {turns} turns" in participants
    assert len(raw["meeting_transcripts"]) >= sum(turns_by_speaker.values())


def test_minutes__vcsum_are_chinese_with_the_real_speakers():
    meeting = _meeting("vcsum-samples.jsonl", 1)

    result = _from_meeting(meeting, "meeting_minutes")

    text = result.text
    assert text.startswith("# 会议纪要：vcsum-samples #2\n")
    for heading in ("参会人", "要点", "决定", "行动项"):
        assert f"\n## {heading}\n" in text
    assert "Participants" not in text and "Key points" not in text
    speakers = {line.split(": ", 1)[0] for line in meeting.text.split("\n")}
    participants = _section(text, "参会人")
    assert {f"- {s}：" in participants for s in speakers} == {True}
    key_points = _section(text, "要点")
    assert key_points.count("\n- **发言人") >= 3
    assert "石林彩玉" in key_points


def test_minutes__show_task_name_and_meeting_time():
    request = _request(
        "Ann: We will ship the new remote control design on Friday.\n"
        "Bo: Fine, the remote control team agrees.",
        name="Launch review",
        meeting_time=datetime(2024, 5, 1, 14, 30),
    )

    result = _generate(request)

    assert result.text.startswith("# Meeting minutes: Launch review\n")
    assert "**Meeting time**: 2024-05-01 14:30" in result.text


def test_minutes__language_follows_the_task_then_the_transcript_then_the_locale():
    english = "Ann: We will ship the remote control on Friday.\nBo: Good plan for us."

    by_transcript = _generate(_request(english, locale="zh-CN"))
    by_task = _generate(_request(english, language="zh", locale="en"))
    french = "Ann: Bonjour à tous, nous parlons du budget de la télécommande."
    by_locale = _generate(_request(french, locale="zh-CN"))

    assert by_transcript.text.startswith("# Meeting minutes:")
    assert by_task.text.startswith("# 会议纪要：")
    assert by_locale.text.startswith("# 会议纪要：")


def test_minutes__a_transcript_without_speakers_says_so():
    prose = (
        "The committee reviewed the budget for the new library. "
        "The budget for books grows by ten percent next year. "
        "The library opens on Sundays from March."
    )

    result = _generate(_request(prose))

    assert "The transcript does not name its speakers." in result.text
    assert "budget" in _section(result.text, "Key points")


def test_minutes__a_short_meeting_without_repeated_words_still_has_key_points():
    transcript = "Ann: The weather was lovely in the garden.\nBo: Roses bloomed early."

    result = _generate(_request(transcript))

    key_points = _section(result.text, "Key points")
    assert "- **Ann**: The weather was lovely in the garden." in key_points


def test_minutes__other_scripts_are_scored_too():
    transcript = (
        "민수: 오늘 회의에서 예산 계획을 검토합니다.\n"
        "지영: 예산 계획은 다음 주까지 확정해야 합니다.\n"
        "Ольга: Бюджет проекта нужно утвердить."
    )

    result = _generate(_request(transcript))

    key_points = _section(result.text, "Key points")
    assert "- **지영**: 예산 계획은 다음 주까지 확정해야 합니다." in key_points
    assert "- **Ольга**: Бюджет проекта нужно утвердить." in key_points


def test_minutes__a_label_seen_once_in_prose_is_not_a_speaker():
    transcript = (
        "The planning meeting started late because of the projector.\n"
        "Note: the projector in room four is broken again.\n"
        "The hiring plan for the support team was reviewed in detail."
    )

    result = _generate(_request(transcript))

    assert "The transcript does not name its speakers." in result.text
    assert "Note: the projector" in result.text


def test_minutes__in_a_labelled_transcript_a_speaker_may_speak_once():
    transcript = (
        "Ann: Welcome everyone to the planning meeting.\n"
        "Ann: Let's review the hiring plan for the support team.\n"
        "Bo: The support team needs two more people by March."
    )

    result = _generate(_request(transcript))

    participants = _section(result.text, "Participants")
    assert "- Ann: 2 turns" in participants
    assert "- Bo: 1 turn\n" in participants


# --- decisions and action items -----------------------------------------------------


def test_decisions__english_cue_words_are_found():
    transcript = (
        "Ann: We looked at three suppliers for the rubber casing.\n"
        "Bo: After the tests we decided to use the cheaper rubber casing supplier.\n"
        "Ann: Let's see what the weather does."
    )

    result = _generate(_request(transcript))

    decisions = _section(result.text, "Decisions")
    assert (
        "**Bo**: After the tests we decided to use the cheaper rubber casing supplier."
        in decisions
    )
    assert "weather" not in decisions


def test_decisions__a_bare_agreement_stands_for_the_proposal():
    transcript = (
        "Ann: We could power the remote with a small solar panel.\n"
        "Bo: Agreed.\n"
        "Cy: Sounds fine to everyone here."
    )

    result = _generate(_request(transcript))

    decisions = _section(result.text, "Decisions")
    assert "**Ann**: We could power the remote with a small solar panel." in decisions


def test_decisions__chinese_cue_words_are_found_and_negations_are_not():
    transcript = (
        "张三：经过讨论，我们决定下周三正式上线新版本的会员系统。\n"
        "李四：这个方案我还不确定，成本可能偏高一些。\n"
        "张三：好的，那就这么定了，会员价格保持不变。"
    )

    result = _generate(_request(transcript, locale="zh-CN"))

    decisions = _section(result.text, "决定")
    assert "我们决定下周三正式上线新版本的会员系统" in decisions
    assert "就这么定了" in decisions
    assert "不确定" not in decisions


def test_action_items__first_person_offer_is_owned_by_the_speaker_with_its_due_date():
    transcript = (
        "Ann: The budget review is still open for the marketing campaign.\n"
        "Bo: I'll send the revised budget to finance by Friday.\n"
        "Ann: Thanks, that works."
    )

    result = _generate(_request(transcript, "action_items"))

    assert result.data["items"] == [
        {
            "owner": "Bo",
            "task": "I'll send the revised budget to finance by Friday.",
            "due": "by Friday",
        }
    ]


def test_action_items__a_named_speaker_owns_what_is_assigned_to_them():
    transcript = (
        "Ann: The slides for the customer review are not ready yet.\n"
        "Carol: Right, the charts are missing.\n"
        "Ann: So Carol will prepare the slides before the next meeting.\n"
        "Carol: Okay."
    )

    result = _generate(_request(transcript, "action_items"))

    [item] = result.data["items"]
    assert item["owner"] == "Carol"
    assert "prepare the slides" in item["task"]
    assert item["due"] == "before the next meeting"


def test_action_items__a_request_goes_to_whoever_acknowledges_it():
    transcript = (
        "Ann: Competition matters a lot for the pricing of the remote.\n"
        "Ann: Could you look at the competitors' prices for remotes?\n"
        "Bo: Yep, will do.\n"
        "Cy: Hmm."
    )

    result = _generate(_request(transcript, "action_items"))

    owners = {item["owner"] for item in result.data["items"]}
    assert owners == {"Bo"}


def test_action_items__chinese_owner_and_due_date():
    transcript = (
        "王五：这次会议的记录还没有人整理。\n"
        "张三：我来负责整理会议记录，下周五之前发给大家。\n"
        "王五：好的，谢谢。"
    )

    result = _generate(_request(transcript, "action_items", locale="zh-CN"))

    [item] = result.data["items"]
    assert item == {
        "owner": "张三",
        "task": "我来负责整理会议记录，下周五之前发给大家。",
        "due": "下周五之前",
    }
    assert result.data["summary"] == "从 2 位发言人的会议中识别出 1 项行动项。"


@pytest.mark.parametrize(
    ("filename", "index"),
    [
        ("ami-ES2005a.json", 0),
        ("ami-IS1004a.json", 0),
        ("ami-TS3010a.json", 0),
        *[("vcsum-samples.jsonl", i) for i in range(5)],
    ],
)
def test_action_items__data_validates_against_the_schema(filename, index):
    meeting = _meeting(filename, index)

    result = _from_meeting(meeting, "action_items")

    assert result.format == "json"
    jsonschema.validate(result.data, TYPES["action_items"].json_schema)
    assert json.loads(result.text) == result.data
    assert result.content() == {
        "format": "json",
        "text": result.text,
        "data": result.data,
    }


def test_action_items__es2005a_assignments_are_found():
    meeting = _meeting("ami-ES2005a.json")

    result = _from_meeting(meeting, "action_items")

    items = {item["task"]: item["owner"] for item in result.data["items"]}
    assert items["You look at competition and design."] == "Marketing"
    assert items["You do the looking around at other remote controls."] == "Marketing"


def test_action_items__none_found_gives_an_empty_list_that_validates():
    transcript = (
        "Ann: The weather was lovely in the garden.\nBo: The roses bloomed early."
    )

    result = _generate(_request(transcript, "action_items"))

    assert result.data == {
        "items": [],
        "summary": "0 action items from a meeting of 2 participants.",
    }
    jsonschema.validate(result.data, TYPES["action_items"].json_schema)


def test_action_items__as_markdown_for_a_markdown_type():
    markdown_actions = replace(
        TYPES["action_items"], format="markdown", json_schema=None
    )
    request = _request(
        "Bo: I'll send the revised budget to finance by Friday.\nAnn: Thanks.",
        artifact_type=markdown_actions,
    )

    result = _generate(request)

    assert result.format == "markdown"
    assert result.text.startswith("# Action items: Weekly sync\n")
    assert (
        "- [ ] **Bo**: I'll send the revised budget to finance by Friday."
        in result.text
    )


def test_action_items__output_failing_a_custom_schema_is_output_invalid():
    strict = replace(
        TYPES["action_items"],
        name="strict_actions",
        json_schema={"type": "object", "required": ["title"]},
    )
    request = _request("Bo: I'll send the budget.\nAnn: Thanks.", artifact_type=strict)

    with pytest.raises(JobError) as caught:
        _generate(request)

    assert caught.value.code is ErrorCode.OUTPUT_INVALID
    assert not caught.value.retryable


# --- summary --------------------------------------------------------------------------


def test_summary__is_a_paragraph_and_bullets():
    meeting = _meeting("ami-ES2005a.json")

    result = _from_meeting(meeting, "summary")

    blocks = result.text.split("\n\n")
    assert blocks[0] == "# Summary: ami-ES2005a"
    assert blocks[1].startswith("4 participants (Project Manager, ")
    bullets = blocks[2].split("\n")
    assert len(bullets) >= 3
    assert all(line.startswith("- ") for line in bullets)
    assert bullets[-1].endswith("action items found.")
    assert "remote control" in result.text


def test_summary__chinese_meeting_gets_a_chinese_summary():
    meeting = _meeting("vcsum-samples.jsonl", 4)

    result = _from_meeting(meeting, "summary")

    assert result.text.startswith("# 会议摘要：vcsum-samples #5\n")
    assert "位发言人（发言人" in result.text
    assert "元宇宙" in result.text


# --- the generator contract -----------------------------------------------------------


@pytest.mark.parametrize("type_name", ["meeting_minutes", "summary", "action_items"])
def test_generate__is_deterministic(type_name):
    meeting = _meeting("ami-IS1004a.json")

    first = _from_meeting(meeting, type_name)
    second = _from_meeting(meeting, type_name)

    assert first.text == second.text
    assert first.data == second.data


@pytest.mark.parametrize("transcript", ["", "   \n\t\n", "{vocalsound} {disfmarker}"])
def test_generate__empty_transcript_fails_input_empty(transcript):
    with pytest.raises(JobError) as caught:
        _generate(_request(transcript))

    assert caught.value.code is ErrorCode.INPUT_EMPTY
    assert not caught.value.retryable


def test_generate__reports_progress_before_working():
    reports: list[dict[str, Any]] = []

    async def record(progress: dict[str, Any]) -> None:
        reports.append(progress)

    request = _request(_meeting("ami-ES2005a.json").text)
    result = asyncio.run(OfflineGenerator().generate(request, record))

    assert reports[0] == {"phase": "extracting"}
    assert reports[-1] == {"phase": "written", "output_chars": len(result.text)}


def test_generate__metadata_names_the_generator_and_counts_characters():
    transcript = _meeting("ami-TS3010a.json").text

    result = _generate(_request(transcript))

    assert result.metadata == {
        "generator": "offline",
        "model": "offline-extractive",
        "usage": {"input_chars": len(transcript), "output_chars": len(result.text)},
    }


@pytest.mark.timeout(120)
def test_generate__a_5_mb_transcript_completes_with_a_bounded_document():
    english = "\n".join(
        _meeting(name).text
        for name in ("ami-ES2005a.json", "ami-IS1004a.json", "ami-TS3010a.json")
    )
    chinese = "\n".join(
        t.text for t in read_transcripts(MEETINGS / "vcsum-samples.jsonl")
    )
    block = english + "\n" + chinese + "\n"
    transcript = block * (5_000_000 // len(block.encode()) + 1)

    result = _generate(_request(transcript, language="en"))

    assert len(transcript.encode()) >= 5_000_000
    assert "## Key points" in result.text
    assert "- Project Manager: " in result.text
    assert len(result.text) < 20_000


def test_generate__an_unpunctuated_megabyte_line_is_cut_into_short_quotes():
    transcript = "我们今天讨论预算安排并且确定下一步的工作" * 50_000

    result = _generate(_request(transcript, locale="zh-CN"))

    key_points = _section(result.text, "要点").strip().split("\n")
    assert key_points
    assert all(len(point) <= 250 for point in key_points)


# --- echo and the factory -------------------------------------------------------------


def test_echo__writes_a_small_fixed_document():
    request = _request("Ann: hello there", name="Smoke test", locale="zh-CN")

    result = _generate(request, EchoGenerator())

    assert result.format == "markdown"
    assert (
        result.text == "# 会议纪要\n\nTask: Smoke test\n\nTranscript: 16 characters\n"
    )
    assert result.metadata["generator"] == "echo"
    assert result.metadata["usage"] == {
        "input_chars": 16,
        "output_chars": len(result.text),
    }


def test_echo__json_types_get_data_that_passes_their_schema():
    result = _generate(_request("Ann: hi", "action_items"), EchoGenerator())

    assert result.data == {"items": []}
    assert json.loads(result.text) == result.data
    jsonschema.validate(result.data, TYPES["action_items"].json_schema)


def test_echo__empty_transcript_fails_input_empty():
    with pytest.raises(JobError) as caught:
        _generate(_request("  \n"), EchoGenerator())

    assert caught.value.code is ErrorCode.INPUT_EMPTY


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "required": ["a", "b"],
            "properties": {
                "a": {
                    "type": "array",
                    "minItems": 2,
                    "items": {"type": "integer", "minimum": 3},
                },
                "b": {"type": "string", "minLength": 2},
            },
        },
        {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
        {"enum": ["low", "high"]},
        {"type": ["null", "string"]},
        {
            "allOf": [
                {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"const": 1}},
                },
                {
                    "type": "object",
                    "required": ["y"],
                    "properties": {"y": {"type": "number"}},
                },
            ]
        },
    ],
)
def test_minimal_instance__passes_the_schema(schema):
    jsonschema.validate(minimal_instance(schema), schema)


def test_get_generator__builds_offline_and_echo():
    assert isinstance(get_generator("offline"), OfflineGenerator)
    assert isinstance(get_generator("echo"), EchoGenerator)
    assert set(GENERATOR_NAMES) >= {"offline", "echo"}


def test_get_generator__unknown_name_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="unknown generator 'gpt'"):
        get_generator("gpt")
