"""Transcript files for ``artifactd enqueue``: detect the format, normalize the text.

Reads plain text, QMSum JSON, VCSum JSONL (one task per line), WebVTT and SRT
into ``Transcript`` records whose text has one ``Speaker: utterance`` line per
turn where the speakers are known. A file is read whole or not at all: any
problem raises ``TranscriptError`` naming the file, and the line for JSONL.
Nothing here touches the database; ``enqueue`` turns the records into rows.

The text helpers at the bottom (``scrub``, ``strip_disfluency_marks``,
``guess_language``) are shared with the offline generator.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import srt
import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from shared.errors import TranscriptError


@dataclass(frozen=True)
class Transcript:
    """One meeting read from a file, ready to become a task."""

    name: str
    text: str
    language: str | None
    meeting_time: datetime | None
    source: str
    external_id: str | None = None


class _BadInput(Exception):
    """A reason a file cannot be used; ``read_transcripts`` adds the path."""


def read_transcripts(path: Path) -> list[Transcript]:
    """Every task in ``path``: one for most files, one per line of JSONL.

    Raises:
        TranscriptError: the file cannot be read or holds no transcript; no
            task is returned for it.
    """
    try:
        text = _read_text(path)
        return _READERS[_detect_format(path, text)](path, text)
    except _BadInput as exc:
        raise TranscriptError(path, str(exc)) from None


# --- reading and detection -------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _BadInput("no such file") from None
    except IsADirectoryError:
        raise _BadInput("is a directory, not a file") from None
    except PermissionError:
        raise _BadInput("permission denied") from None
    except OSError as exc:
        raise _BadInput(f"cannot read: {exc.strerror or exc}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _BadInput("UTF-16 text; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _BadInput(
            f"not UTF-8 text (invalid byte at offset {exc.start})"
        ) from None
    return scrub(text.replace("\r\n", "\n").replace("\r", "\n"))


_EXTENSIONS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".vtt": "vtt",
    ".webvtt": "vtt",
    ".srt": "srt",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
_SRT_START_RE = re.compile(r"\d+\n[\d:,.]+ *--> *[\d:,.]+")


def _detect_format(path: Path, text: str) -> str:
    by_extension = _EXTENSIONS.get(path.suffix.lower())
    if by_extension:
        return by_extension
    head = text.lstrip()
    if head.startswith("WEBVTT"):
        return "vtt"
    if _SRT_START_RE.match(head):
        return "srt"
    if head.startswith("{"):
        first_line = head.split("\n", 1)[0]
        if _is_json_object(first_line):
            return "jsonl" if "\n" in head.strip() else "json"
        if _is_json_object(head):
            return "json"
    return "text"


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


# --- plain text --------------------------------------------------------------

_TITLE_KEYS = {"title", "subject", "标题", "主题", "会议主题", "会议名称"}
_TIME_KEYS = {"date", "time", "meeting time", "时间", "日期", "会议时间"}
_HEADER_RE = re.compile(r"([^:：\n]{1,20})[:：]\s*(.+)")


def _read_plain(path: Path, text: str) -> list[Transcript]:
    lines = [line.rstrip() for line in text.split("\n")]
    title, meeting_time, start = _plain_header(lines)
    body = _squeeze_blank_lines(lines[start:])
    if not body:
        raise _BadInput("no transcript text")
    return [_transcript(path, title or path.stem, body, meeting_time)]


def _plain_header(lines: list[str]) -> tuple[str | None, datetime | None, int]:
    """Title and time from the first lines: ``# Title``, ``Title:``, ``Date:``.

    A ``Date:`` line counts only if its value reads as a time, so a speaker
    who happens to be called "Time" stays in the transcript.
    """
    title: str | None = None
    meeting_time: datetime | None = None
    index = 0
    while index < len(lines) and not lines[index].strip():
        index += 1
    while index < len(lines):
        line = lines[index].strip()
        match = _HEADER_RE.fullmatch(line)
        key = match.group(1).strip().lower() if match else ""
        if title is None and line.startswith("# "):
            title = line[2:].strip() or None
        elif match and title is None and key in _TITLE_KEYS:
            title = match.group(2).strip()
        elif match and meeting_time is None and key in _TIME_KEYS:
            meeting_time = parse_meeting_time(match.group(2))
            if meeting_time is None:
                break
        else:
            break
        index += 1
    return title, meeting_time, index


def _squeeze_blank_lines(lines: list[str]) -> str:
    kept: list[str] = []
    for line in lines:
        if line.strip() or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).strip()


# --- QMSum JSON and VCSum JSONL ---------------------------------------------


def _read_json(path: Path, text: str) -> list[Transcript]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadInput(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _BadInput("invalid JSON: nested too deeply") from None
    return [_from_object(path, obj, default_name=path.stem, source=str(path))]


def _read_jsonl(path: Path, text: str) -> list[Transcript]:
    transcripts = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _BadInput(f"line {number}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise _BadInput(f"line {number}: invalid JSON: nested too deeply") from None
        try:
            transcripts.append(
                _from_object(
                    path,
                    obj,
                    default_name=f"{path.stem} #{number}",
                    source=f"{path}:{number}",
                )
            )
        except _BadInput as exc:
            raise _BadInput(f"line {number}: {exc}") from None
    if not transcripts:
        raise _BadInput("no JSON lines")
    return transcripts


def _from_object(path: Path, obj: Any, *, default_name: str, source: str) -> Transcript:
    if not isinstance(obj, dict):
        raise _BadInput(f"expected a JSON object, found {_json_kind(obj)}")
    if "meeting_transcripts" in obj:
        body = _qmsum_text(obj["meeting_transcripts"])
    elif "context" in obj:
        body = _vcsum_text(obj)
    else:
        raise _BadInput(
            "neither QMSum ('meeting_transcripts') nor VCSum ('context' and 'speaker')"
        )
    if not body:
        raise _BadInput("no transcript text")

    title = obj.get("title") or obj.get("name")
    meeting_time = None
    if obj.get("meeting_time") is not None:
        meeting_time = parse_meeting_time(str(obj["meeting_time"]))
        if meeting_time is None:
            raise _BadInput(f"'meeting_time' is not a date: {obj['meeting_time']!r}")
    external_id = obj.get("id")
    return _transcript(
        path,
        title if isinstance(title, str) and title.strip() else default_name,
        body,
        meeting_time,
        source=source,
        external_id=None if external_id is None else str(external_id),
    )


def _qmsum_text(turns: Any) -> str:
    if not isinstance(turns, list):
        raise _BadInput("'meeting_transcripts' must be a list")
    lines = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise _BadInput(
                f"meeting_transcripts[{index}] must be an object with a text 'content'"
            )
        speaker = turn.get("speaker")
        utterance = _detokenize(strip_disfluency_marks(turn["content"]))
        if utterance:
            lines.append(
                _line(speaker if isinstance(speaker, str) else None, utterance)
            )
    return "\n".join(lines)


def _vcsum_text(obj: dict[str, Any]) -> str:
    """VCSum: ``context`` is paragraphs of sentences, ``speaker`` numbers them.

    The published samples give one speaker per paragraph; other exports give
    one per sentence. Either length is accepted, anything else is an error.
    """
    context, speakers = obj["context"], obj.get("speaker")
    if not isinstance(context, list) or not all(
        isinstance(p, list) and all(isinstance(s, str) for s in p) for p in context
    ):
        raise _BadInput("'context' must be a list of paragraphs, each a list of text")
    if not isinstance(speakers, list) or not all(
        isinstance(s, int | str) and not isinstance(s, bool) for s in speakers
    ):
        raise _BadInput("'speaker' must be a list of speaker numbers")

    sentence_count = sum(len(p) for p in context)
    if len(speakers) == len(context):
        turns = [(s, p) for s, p in zip(speakers, context, strict=True)]
    elif len(speakers) == sentence_count:
        flat = (sentence for paragraph in context for sentence in paragraph)
        turns = [(s, [sentence]) for s, sentence in zip(speakers, flat, strict=True)]
    else:
        raise _BadInput(
            f"'speaker' has {len(speakers)} entries but 'context' has "
            f"{len(context)} paragraphs and {sentence_count} sentences"
        )

    all_text = "".join(sentence for paragraph in context for sentence in paragraph)
    label = "发言人" if guess_language(all_text) == "zh" else "Speaker "
    lines: list[str] = []
    last_speaker: object = None
    for speaker, sentences in turns:
        utterance = _join_sentences(s.strip() for s in sentences)
        if not utterance:
            continue
        name = (
            str(speaker)
            if isinstance(speaker, str) and not speaker.isdigit()
            else f"{label}{speaker}"
        )
        if lines and speaker == last_speaker:
            lines[-1] = _join_sentences([lines[-1], utterance])
        else:
            lines.append(_line(name, utterance))
        last_speaker = speaker
    return "\n".join(lines)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


# --- WebVTT and SRT ----------------------------------------------------------

_VOICE_RE = re.compile(r"<v(?:\.[^\s>]+)*\s+([^>]+)>")
# [^<>] keeps a stray "<" from making this quadratic on long lines.
_TAG_RE = re.compile(r"<[^<>]*>")


def _read_vtt(path: Path, text: str) -> list[Transcript]:
    try:
        captions = webvtt.from_buffer(io.StringIO(text), strict=True)
    except MalformedFileError:
        raise _BadInput("not WebVTT: the first line must start with WEBVTT") from None
    except MalformedCaptionError as exc:
        raise _BadInput(f"malformed WebVTT cue: {exc}") from None

    turns: list[tuple[str | None, str]] = []
    for caption in captions.captions:
        turns.extend(_voice_segments(" ".join(caption.lines)))
    body = _merge_turns(turns)
    if not body:
        raise _BadInput("no cues with text")
    title = captions.header_text.strip().lstrip("-–—:").strip()
    return [_transcript(path, title or path.stem, body, None)]


def _voice_segments(raw: str) -> list[tuple[str | None, str]]:
    """``<v Alice>Hi <v Bob>Hello`` → ``[("Alice", "Hi"), ("Bob", "Hello")]``."""
    parts = _VOICE_RE.split(raw)
    segments: list[tuple[str | None, str]] = [(None, _cue_text(parts[0]))]
    for i in range(1, len(parts), 2):
        segments.append((parts[i].strip(), _cue_text(parts[i + 1])))
    return [(speaker, text) for speaker, text in segments if text]


def _read_srt(path: Path, text: str) -> list[Transcript]:
    try:
        subtitles = list(srt.parse(text))
    except srt.SRTParseError as exc:
        raise _BadInput(f"malformed SRT: {exc}") from None
    except ValueError as exc:
        raise _BadInput(f"malformed SRT timestamp: {exc}") from None

    body = _merge_turns([(None, _cue_text(s.content)) for s in subtitles])
    if not body:
        raise _BadInput("no subtitles with text")
    return [_transcript(path, path.stem, body, None)]


def _cue_text(raw: str) -> str:
    return " ".join(html.unescape(_TAG_RE.sub("", raw)).split())


def _merge_turns(turns: list[tuple[str | None, str]]) -> str:
    """Consecutive cues of one known speaker become one line; others stay apart."""
    lines: list[str] = []
    last: str | None = None
    for speaker, text in turns:
        if not text:
            continue
        if speaker is not None and speaker == last and lines:
            lines[-1] = f"{lines[-1]} {text}"
        else:
            lines.append(_line(speaker, text))
        last = speaker
    return "\n".join(lines)


_READERS: dict[str, Callable[[Path, str], list[Transcript]]] = {
    "text": _read_plain,
    "json": _read_json,
    "jsonl": _read_jsonl,
    "vtt": _read_vtt,
    "srt": _read_srt,
}


# --- building records ----------------------------------------------------------


def _transcript(
    path: Path,
    name: str,
    text: str,
    meeting_time: datetime | None,
    *,
    source: str | None = None,
    external_id: str | None = None,
) -> Transcript:
    text = scrub(text)
    return Transcript(
        name=" ".join(scrub(name).split()) or path.stem,
        text=text,
        language=guess_language(text),
        meeting_time=meeting_time,
        source=source or str(path),
        external_id=scrub(external_id) if external_id is not None else None,
    )


def _line(speaker: str | None, utterance: str) -> str:
    speaker = " ".join(speaker.split()) if speaker else None
    return f"{speaker}: {utterance}" if speaker else utterance


_CJK_END = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]$")


def _join_sentences(sentences: Any) -> str:
    """Join with a space between Latin text, with nothing after CJK text."""
    joined = ""
    for sentence in sentences:
        if not sentence:
            continue
        if joined and not _CJK_END.search(joined):
            joined += " "
        joined += sentence
    return joined


_DETOKENIZE_RE = re.compile(r"\s+([,.?!;:%])")


def _detokenize(text: str) -> str:
    """QMSum writes ``Yeah , okay .``; readers expect ``Yeah, okay.``."""
    return _DETOKENIZE_RE.sub(r"\1", " ".join(text.split()))


_CN_DATE_RE = re.compile(
    r"(\d{4})年(\d{1,2})月(\d{1,2})[日号]\s*(?:(\d{1,2})[:：点](\d{2})?分?)?"
)


def parse_meeting_time(value: str) -> datetime | None:
    """An ISO 8601 time (``/`` allowed for ``-``) or ``2024年5月1日 14:30``."""
    value = value.strip()
    try:
        return datetime.fromisoformat(value.replace("/", "-"))
    except ValueError:
        pass
    match = _CN_DATE_RE.fullmatch(value)
    if not match:
        return None
    year, month, day, hour, minute = (int(g) if g else 0 for g in match.groups())
    try:
        return datetime(year, month, day, hour, minute)
    except ValueError:
        return None


# --- text helpers shared with the offline generator ---------------------------

# PostgreSQL text cannot hold NUL, and a lone surrogate (from a JSON escape
# such as "\ud800") cannot be encoded as UTF-8. Paired surrogates never
# survive decoding, so every surrogate left in a str is unpaired.
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
_DISFLUENCY_RE = re.compile(r"\{[a-z_]+\}")


def scrub(text: str) -> str:
    """``text`` without NUL characters and unpaired surrogates."""
    return _UNSTORABLE_RE.sub("", text)


def strip_disfluency_marks(text: str) -> str:
    """Drop transcriber marks such as ``{vocalsound}`` and ``{disfmarker}``."""
    return _DISFLUENCY_RE.sub(" ", text)


_HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_KANA_RE = re.compile(r"[\u3040-\u30ff]")
_HANGUL_RE = re.compile(r"[\uac00-\ud7af]")
_WORD_RE = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_ENGLISH_WORDS = frozenset(
    "the and to of a is it that we you i in this for on be have so was are "
    "what with not but they do can will just think yeah okay".split()
)
_LANGUAGE_SAMPLE_CHARS = 200_000


def guess_language(text: str) -> str | None:
    """``"zh"`` or ``"en"`` from the share of Han characters and English words.

    Looks at the first 200,000 characters only. Japanese and Korean, other
    Latin-script languages and text too short to tell give ``None``.
    """
    sample = text[:_LANGUAGE_SAMPLE_CHARS]
    han = len(_HAN_RE.findall(sample))
    words = _WORD_RE.findall(sample)
    if (
        len(_KANA_RE.findall(sample)) > han / 10 + 5
        or len(_HANGUL_RE.findall(sample)) > 5
    ):
        return None
    # A Han character carries about as much as an English word.
    if han >= 2 and han >= len(words):
        return "zh"
    english = sum(1 for word in words if word.lower() in _ENGLISH_WORDS)
    if len(words) >= 3 and english >= max(1, len(words) // 10):
        return "en"
    return None
