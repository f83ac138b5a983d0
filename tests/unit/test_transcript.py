"""Reading transcript files: every format, normalisation, and every refusal."""

from __future__ import annotations

import json
import re
from datetime import datetime
from importlib import resources
from itertools import pairwise
from pathlib import Path

import pytest

from shared.errors import TranscriptError
from shared.transcript import guess_language, read_transcripts

MEETINGS = Path(str(resources.files("worker") / "meetings"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _reason(path: Path) -> str:
    with pytest.raises(TranscriptError) as caught:
        read_transcripts(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    return caught.value.reason


# --- the bundled real meetings ------------------------------------------------


def test_read_transcripts__qmsum_json_gives_speaker_lines_without_disfluency_marks():
    path = MEETINGS / "ami-ES2005a.json"

    [meeting] = read_transcripts(path)

    lines = meeting.text.split("\n")
    assert lines[0] == "Project Manager: Uh, making a profit of fifty million Euros."
    assert "{" not in meeting.text
    assert all(line.split(": ", 1)[0] in _AMI_ROLES for line in lines)
    assert "remote control" in meeting.text
    assert meeting.name == "ami-ES2005a"
    assert meeting.language == "en"
    assert meeting.source == str(path)
    assert meeting.meeting_time is None
    assert meeting.external_id is None


_AMI_ROLES = {"Project Manager", "Marketing", "User Interface", "Industrial Designer"}


def test_read_transcripts__qmsum_drops_turns_that_were_only_marks():
    raw = json.loads((MEETINGS / "ami-ES2005a.json").read_text("utf-8"))
    turns = raw["meeting_transcripts"]
    only_marks = [t for t in turns if not re.sub(r"\{\w+\}", "", t["content"]).strip()]

    [meeting] = read_transcripts(MEETINGS / "ami-ES2005a.json")

    assert only_marks
    assert len(meeting.text.split("\n")) == len(turns) - len(only_marks)


def test_read_transcripts__vcsum_jsonl_gives_one_task_per_line():
    path = MEETINGS / "vcsum-samples.jsonl"

    meetings = read_transcripts(path)

    assert [m.name for m in meetings] == [f"vcsum-samples #{n}" for n in range(1, 6)]
    assert [m.source for m in meetings] == [f"{path}:{n}" for n in range(1, 6)]
    assert [m.external_id for m in meetings] == ["0", "1", "2", "3", "4"]
    assert {m.language for m in meetings} == {"zh"}
    for meeting in meetings:
        assert all(line.startswith("发言人") for line in meeting.text.split("\n"))


def test_read_transcripts__vcsum_joins_a_speakers_paragraphs_into_one_turn():
    first = json.loads(
        (MEETINGS / "vcsum-samples.jsonl").read_text("utf-8").split("\n")[0]
    )
    changes = 1 + sum(1 for a, b in pairwise(first["speaker"]) if a != b)

    [meeting, *_] = read_transcripts(MEETINGS / "vcsum-samples.jsonl")

    lines = meeting.text.split("\n")
    assert len(lines) == changes
    assert lines[0].startswith(f"发言人{first['speaker'][0]}: {first['context'][0][0]}")
    assert first["context"][0][1] in lines[0]


def test_read_transcripts__vcsum_speaker_per_sentence_is_accepted(tmp_path):
    record = {
        "id": 7,
        "context": [["我们开始吧。", "今天讨论预算。"], ["好的。"]],
        "speaker": [1, 1, 2],
    }
    path = _write(tmp_path / "one.jsonl", json.dumps(record, ensure_ascii=False) + "\n")

    [meeting] = read_transcripts(path)

    assert meeting.text == "发言人1: 我们开始吧。今天讨论预算。\n发言人2: 好的。"
    assert meeting.external_id == "7"


def test_read_transcripts__jsonl_skips_blank_lines_and_numbers_by_line(tmp_path):
    record = {"context": [["Hello there, we start now."]], "speaker": [1]}
    line = json.dumps(record)
    path = _write(tmp_path / "talks.jsonl", f"\n{line}\n\n{line}\n")

    meetings = read_transcripts(path)

    assert [m.name for m in meetings] == ["talks #2", "talks #4"]
    assert [m.source for m in meetings] == [f"{path}:2", f"{path}:4"]
    assert meetings[0].text == "Speaker 1: Hello there, we start now."


def test_read_transcripts__json_title_and_meeting_time_are_used(tmp_path):
    record = {
        "title": "Weekly sync",
        "meeting_time": "2024-05-01T10:00:00+08:00",
        "meeting_transcripts": [{"speaker": "Ann", "content": "Let's begin ."}],
    }
    path = _write(tmp_path / "sync.json", json.dumps(record))

    [meeting] = read_transcripts(path)

    assert meeting.name == "Weekly sync"
    assert meeting.meeting_time == datetime.fromisoformat("2024-05-01T10:00:00+08:00")
    assert meeting.text == "Ann: Let's begin."


# --- plain text -------------------------------------------------------------------


def test_read_transcripts__plain_text_takes_title_and_date_from_the_header(tmp_path):
    path = _write(
        tmp_path / "notes.txt",
        "# Budget review\nDate: 2024-03-05 14:30\n\nAnn: We start.\nBo: Fine.\n",
    )

    [meeting] = read_transcripts(path)

    assert meeting.name == "Budget review"
    assert meeting.meeting_time == datetime(2024, 3, 5, 14, 30)
    assert meeting.text == "Ann: We start.\nBo: Fine."
    assert meeting.source == str(path)


def test_read_transcripts__plain_text_reads_a_chinese_header(tmp_path):
    path = _write(
        tmp_path / "周会.txt",
        "标题：产品周会\n会议时间：2024年5月1日 9:30\n张三：开始吧。\n",
    )

    [meeting] = read_transcripts(path)

    assert meeting.name == "产品周会"
    assert meeting.meeting_time == datetime(2024, 5, 1, 9, 30)
    assert meeting.text == "张三：开始吧。"
    assert meeting.language == "zh"


def test_read_transcripts__a_speaker_called_time_is_not_a_header(tmp_path):
    path = _write(tmp_path / "t.txt", "Time: we are running out of it.\nAnn: Agreed.\n")

    [meeting] = read_transcripts(path)

    assert meeting.name == "t"
    assert meeting.meeting_time is None
    assert meeting.text.startswith("Time: we are running out of it.")


def test_read_transcripts__plain_text_is_normalised(tmp_path):
    path = tmp_path / "raw.txt"
    path.write_bytes("\ufeffAnn: hello\x00 there  \r\n\r\n\r\n\r\nBo: hi\r\n".encode())

    [meeting] = read_transcripts(path)

    assert meeting.text == "Ann: hello there\n\nBo: hi"


def test_read_transcripts__strips_nul_and_lone_surrogates_from_json_escapes(tmp_path):
    content = (
        '{"meeting_transcripts": [{"speaker": "A\\u0000nn", "content": "x\\ud800y z"}]}'
    )
    path = _write(tmp_path / "escaped.json", content)

    [meeting] = read_transcripts(path)

    assert meeting.text == "Ann: xy z"
    meeting.text.encode("utf-8")


# --- subtitles -------------------------------------------------------------------


def test_read_transcripts__webvtt_voice_tags_become_speakers(tmp_path):
    path = _write(
        tmp_path / "call.vtt",
        "WEBVTT - Design review\n\n"
        "00:00:01.000 --> 00:00:03.000\n<v Alice>Hello &amp; <b>welcome</b>.</v>\n\n"
        "00:00:03.000 --> 00:00:05.000\n<v Alice>Shall we start?\n\n"
        "NOTE a comment\n\n"
        "00:00:05.000 --> 00:00:06.000\n<v.loud Bob>Yes.\n\n"
        "00:00:06.000 --> 00:00:07.000\nApplause\n",
    )

    [meeting] = read_transcripts(path)

    assert (
        meeting.text == "Alice: Hello & welcome. Shall we start?\nBob: Yes.\nApplause"
    )
    assert meeting.name == "Design review"
    assert meeting.language == "en"


def test_read_transcripts__srt_gives_a_line_per_subtitle_without_markup(tmp_path):
    path = _write(
        tmp_path / "talk.srt",
        "1\n00:00:01,000 --> 00:00:02,000\nHello everyone.\n\n"
        "2\n00:00:02,500 --> 00:00:04,000\n<i>Ann:</i> we start\nwith the budget.\n",
    )

    [meeting] = read_transcripts(path)

    assert meeting.text == "Hello everyone.\nAnn: we start with the budget."
    assert meeting.name == "talk"


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        (
            "call.caption",
            "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<v Ann>Hi there\n",
            "Ann: Hi there",
        ),
        ("talk.sub", "1\n00:00:01,000 --> 00:00:02,000\nHello there\n", "Hello there"),
        (
            "meeting.data",
            '{"meeting_transcripts": [{"speaker": "Ann", "content": "Hi ."}]}',
            "Ann: Hi.",
        ),
        ("notes", "Ann: a plain line\n", "Ann: a plain line"),
    ],
)
def test_read_transcripts__detects_the_format_from_content(
    tmp_path, filename, content, expected
):
    path = _write(tmp_path / filename, content)

    [meeting] = read_transcripts(path)

    assert meeting.text == expected


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("empty.txt", "", "no transcript text"),
        ("blank.txt", "  \n\t\n", "no transcript text"),
        ("header-only.txt", "# Title\nDate: 2024-01-01\n", "no transcript text"),
        ("bad.json", '{"meeting_transcripts": [', "invalid JSON at line 1"),
        ("list.json", "[1, 2]", "expected a JSON object, found a list"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("deep.jsonl", "[" * 100_000 + "]" * 100_000, "line 1: invalid JSON: nested"),
        ("other.json", '{"minutes": "x"}', "neither QMSum"),
        (
            "notlist.json",
            '{"meeting_transcripts": "hi"}',
            "'meeting_transcripts' must be a list",
        ),
        (
            "nocontent.json",
            '{"meeting_transcripts": [{"speaker": "A"}]}',
            "meeting_transcripts[0] must be an object with a text 'content'",
        ),
        (
            "marks.json",
            '{"meeting_transcripts": [{"speaker": "A", "content": "{vocalsound}"}]}',
            "no transcript text",
        ),
        (
            "when.json",
            '{"meeting_time": "soon", "meeting_transcripts": [{"content": "hi"}]}',
            "'meeting_time' is not a date: 'soon'",
        ),
        ("empty.jsonl", "\n\n", "no JSON lines"),
        (
            "broken.jsonl",
            '{"context": [["a"]], "speaker": [1]}\n{oops\n',
            "line 2: invalid JSON",
        ),
        ("array.jsonl", "[1]\n", "line 1: expected a JSON object, found a list"),
        (
            "nospeaker.jsonl",
            '{"context": [["a"]]}\n',
            "line 1: 'speaker' must be a list",
        ),
        (
            "badcontext.jsonl",
            '{"context": "text", "speaker": [1]}\n',
            "line 1: 'context' must be a list of paragraphs",
        ),
        (
            "mismatch.jsonl",
            '{"context": [["a", "b"]], "speaker": [1, 2, 3]}\n',
            "line 1: 'speaker' has 3 entries but 'context' has 1 paragraphs and 2",
        ),
        (
            "emptyline.jsonl",
            '{"context": [["a"]], "speaker": [1]}\n{"context": [], "speaker": []}\n',
            "line 2: no transcript text",
        ),
        ("noheader.vtt", "00:00:01.000 --> 00:00:02.000\nhi\n", "not WebVTT"),
        (
            "badtime.vtt",
            "WEBVTT\n\n00:00:xx.000 --> 00:00:02.000\nhi\n",
            "malformed WebVTT cue",
        ),
        ("nocues.vtt", "WEBVTT\n\nNOTE nothing here\n", "no cues with text"),
        ("garbage.srt", "this is not a subtitle file", "malformed SRT"),
        (
            "empty.srt",
            "1\n00:00:01,000 --> 00:00:02,000\n<i></i>\n",
            "no subtitles with text",
        ),
    ],
)
def test_read_transcripts__refuses_a_bad_file_with_a_reason(
    tmp_path, filename, content, reason
):
    path = _write(tmp_path / filename, content)

    assert reason in _reason(path)


def test_read_transcripts__jsonl_is_all_or_nothing(tmp_path):
    good = json.dumps({"context": [["Hello there."]], "speaker": [1]})
    path = _write(tmp_path / "mixed.jsonl", f"{good}\n{good}\n[]\n")

    assert _reason(path).startswith("line 3:")


def test_read_transcripts__refuses_a_missing_file(tmp_path):
    assert _reason(tmp_path / "absent.txt") == "no such file"


def test_read_transcripts__refuses_a_directory(tmp_path):
    assert _reason(tmp_path) == "is a directory, not a file"


def test_read_transcripts__refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Ann: café".encode("latin-1"))

    assert _reason(path) == "not UTF-8 text (invalid byte at offset 8)"


def test_read_transcripts__refuses_utf16_with_advice(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_bytes("Ann: hi".encode("utf-16"))

    assert _reason(path) == "UTF-16 text; save it as UTF-8"


# --- language -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("我们今天讨论一下 defi 的发展和 2021 年的计划。", "zh"),
        ("So we need to think about the price of the remote control.", "en"),
        ("Nous allons parler du budget demain matin avec toute l'équipe.", None),
        ("今日はいい天気ですね。ありがとうございます。", None),
        ("12:30 — 14:00", None),
        ("", None),
    ],
)
def test_guess_language__tells_chinese_from_english(text, language):
    assert guess_language(text) == language
