"""The offline generator: extractive minutes, summaries and action items, no LLM.

Deterministic and local, so everything runs with no key and no network. It
finds the speakers, scores sentences by term frequency and position, and
spots decisions and action items by cue words in Chinese and English; the
artifact type's ``offline_kind`` picks what it writes. Every step is linear
in the transcript's length (plus a sort), and the work runs in a thread so the
event loop keeps renewing leases meanwhile.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jsonschema

from shared.errors import ErrorCode, job_error
from shared.transcript import guess_language, strip_disfluency_marks
from worker.generators.base import GenerationRequest, GenerationResult, ProgressCallback

MODEL_NAME = "offline-extractive"
MAX_SENTENCE_CHARS = 300  # longer "sentences" (unpunctuated ASR) are cut at commas
MAX_SHOWN_CHARS = 240  # a quoted sentence is shortened to this in the output


class OfflineGenerator:
    """Writes documents by extraction from the transcript; see the module doc."""

    name = "offline"

    async def generate(
        self, request: GenerationRequest, report_progress: ProgressCallback
    ) -> GenerationResult:
        # isspace() stops at the first visible character; strip() would copy.
        if not request.transcript or request.transcript.isspace():
            raise job_error(ErrorCode.INPUT_EMPTY)

        await report_progress({"phase": "extracting"})
        result = await asyncio.to_thread(write_document, request)
        await report_progress({"phase": "written", "output_chars": len(result.text)})
        return result

    async def aclose(self) -> None:
        return None


def write_document(request: GenerationRequest) -> GenerationResult:
    """Extract from the transcript and render what the artifact type asks for.

    Synchronous and CPU-bound: call it in a thread from async code.
    """
    language = _output_language(request)
    meeting = extract(request.transcript)
    if not meeting.sentences:
        raise job_error(ErrorCode.INPUT_EMPTY, "no words left after cleaning")

    artifact_type = request.artifact_type
    kind = artifact_type.offline_kind
    writer = _Writer(meeting, language, request.task_name, request.meeting_time)
    data: Any = None
    if artifact_type.format == "json":
        data = writer.action_items_data(full=kind != "action_items")
        if artifact_type.json_schema is not None:
            _check_schema(data, artifact_type.json_schema)
        text = json.dumps(data, ensure_ascii=False, indent=2)
    elif kind == "summary":
        text = writer.summary()
    elif kind == "action_items":
        text = writer.action_items_markdown()
    else:
        text = writer.minutes()

    return GenerationResult(
        format=artifact_type.format,
        text=text,
        data=data,
        metadata={
            "generator": "offline",
            "model": MODEL_NAME,
            "usage": {
                "input_chars": len(request.transcript),
                "output_chars": len(text),
            },
        },
    )


def _output_language(request: GenerationRequest) -> str:
    """The task's language if given, else the transcript's, else the locale's."""
    for hint in (request.language, guess_language(request.transcript), request.locale):
        if hint and hint.lower().startswith("zh"):
            return "zh"
        if hint and hint.lower().startswith("en"):
            return "en"
    return "en"


def _check_schema(data: Any, schema: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(data)
    )
    if error is not None:
        raise job_error(ErrorCode.OUTPUT_INVALID, f"offline output: {error.message}")


# --- extraction --------------------------------------------------------------


@dataclass
class Sentence:
    text: str
    speaker: str | None
    position: int  # index among all sentences
    turn: int  # index of the utterance it belongs to
    lowered: str  # lower case, straight apostrophes: what the cues match
    tokens: frozenset[str]
    score: float = 0.0


@dataclass
class ActionItem:
    owner: str | None
    task: str
    due: str | None
    position: int


@dataclass
class Meeting:
    """What extraction found in one transcript."""

    participants: list[tuple[str, int]]  # speaker and turns, most turns first
    turns: list[tuple[str | None, str]]
    sentences: list[Sentence]
    key_points: list[Sentence] = field(default_factory=list)
    decisions: list[Sentence] = field(default_factory=list)
    actions: list[ActionItem] = field(default_factory=list)


def extract(transcript: str) -> Meeting:
    """Speakers, key points, decisions and action items of ``transcript``."""
    turns = _turns(transcript)
    speakers = Counter(speaker for speaker, _ in turns if speaker)
    participants = sorted(speakers.items(), key=lambda item: -item[1])
    sentences = _sentences(turns)
    _score(sentences)

    meeting = Meeting(participants=participants, turns=turns, sentences=sentences)
    meeting.key_points = _key_points(sentences, _key_point_count(len(sentences)))
    meeting.decisions = _decisions(sentences)
    meeting.actions = _actions(meeting, set(speakers))
    return meeting


# "[00:01:02] Alice: text", "Alice：text", "发言人1: text". The label is short;
# whether it really is a speaker is decided by how often it recurs.
_SPEAKER_RE = re.compile(
    r"\s*(?:[\[(]?\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?[\])]?\s+)?"
    r"([^\s:：\[(][^:：]{0,31}?)\s*[:：]\s*(.*)"
)
_NOT_IN_LABEL_RE = re.compile(r"[,.!?;，。！？；、\"“”]|https?$|^\d+$")


def _turns(transcript: str) -> list[tuple[str | None, str]]:
    """(speaker, cleaned text) per line; unlabelled lines continue the last speaker."""
    parsed: list[tuple[str | None, str]] = []
    labels: Counter[str] = Counter()
    for line in transcript.splitlines():
        if not line.strip():
            continue
        match = _SPEAKER_RE.fullmatch(line)
        label = match.group(1).strip() if match else None
        if label and (len(label.split()) > 4 or _NOT_IN_LABEL_RE.search(label)):
            label = None
        if label and match:
            parsed.append((label, match.group(2)))
            labels[label] += 1
        else:
            parsed.append((None, line))

    # In prose, a label seen once is more likely "Note: ..." or "他说：..." than
    # a speaker; in a transcript where most lines are labelled, it is a speaker.
    mostly_labelled = sum(labels.values()) * 2 >= len(parsed)
    turns: list[tuple[str | None, str]] = []
    speaker: str | None = None
    for label, text in parsed:
        if label is not None and (labels[label] >= 2 or mostly_labelled):
            speaker = label
        elif label is not None:
            text = f"{label}: {text}"
        cleaned = _clean(text)
        if cleaned:
            turns.append((speaker, cleaned))
    return turns


_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.?!;:%，。？！；：])")


def _clean(text: str) -> str:
    """What every sentence needs before scoring; the rest waits for ``_display``."""
    text = " ".join(strip_disfluency_marks(text).split())
    return _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text).strip(" ,，")


_SENTENCE_END_RE = re.compile(r"(?<=[。！？!?；;…])\s*|(?<=\.)\s+")
_CLAUSE_END_RE = re.compile(r"(?<=[，,、])\s*")


def _sentences(turns: list[tuple[str | None, str]]) -> list[Sentence]:
    sentences: list[Sentence] = []
    for turn, (speaker, text) in enumerate(turns):
        for piece in _SENTENCE_END_RE.split(text):
            for part in _split_long(piece.strip()):
                if part and _has_words(part):
                    lowered = part.lower().replace("’", "'")
                    sentences.append(
                        Sentence(
                            part,
                            speaker,
                            len(sentences),
                            turn,
                            lowered,
                            _tokens(lowered),
                        )
                    )
    return sentences


def _split_long(sentence: str) -> list[str]:
    """Cut an over-long sentence at commas, and at a fixed width if it has none."""
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return [sentence]
    parts: list[str] = []
    current = ""
    for clause in _CLAUSE_END_RE.split(sentence):
        if current and len(current) + len(clause) > MAX_SENTENCE_CHARS // 2:
            parts.append(current)
            current = ""
        current += clause
    parts.append(current)
    return [
        part[start : start + MAX_SENTENCE_CHARS]
        for part in parts
        for start in range(0, len(part), MAX_SENTENCE_CHARS)
    ]


_HAS_WORDS_RE = re.compile(r"[^\W\d_]")  # a letter of any script


def _has_words(text: str) -> bool:
    return _HAS_WORDS_RE.search(text) is not None


_EN_WORD_RE = re.compile(r"[a-z][a-z'-]*[a-z]")
_HAN_RUN_RE = re.compile(r"[\u3400-\u9fff]{2,}")
# Words of other scripts (Cyrillic, Hangul, kana, ...), so they score too.
_OTHER_WORD_RE = re.compile(r"[^\W\d_a-z\u3400-\u9fff]{2,}")
_EN_STOPWORDS = frozenset(
    """
    a about above after again all also am an and any are aren't as at be because
    been before being below between both but by can can't cannot could couldn't
    did didn't do does doesn't doing don't down during each few for from further
    had hadn't has hasn't have haven't having he her here hers herself him himself
    his how i i'd i'll i'm i've if in into is isn't it it's its itself let's me
    more most mustn't my myself no nor not of off on once only or other ought our
    ours ourselves out over own same shan't she should shouldn't so some such than
    that that's the their theirs them themselves then there there's these they
    they'd they'll they're they've this those through to too under until up very
    was wasn't we we'd we'll we're we've were weren't what what's when where which
    while who whom why will with won't would wouldn't you you'd you'll you're
    you've your yours yourself yourselves yeah yes okay ok right well just like
    really think know mean gonna wanna kind sort thing things going get got
    actually maybe probably quite bit lot lots something anything stuff say said
    one two also still even much many way yep cool alright guess sure uh um umm
    mm hmm mm-hmm uh-huh erm ah oh
    """.split()
)
# Characters that carry grammar rather than topic; a bigram holding one is
# skipped, which stands in for word segmentation well enough for scoring.
_ZH_STOP_CHARS = frozenset("的了是我你他她它们这那就也在有个一不都和吧吗呢啊呀嘛哦么")


def _tokens(lowered: str) -> frozenset[str]:
    tokens = {
        word.removesuffix("s") if len(word) > 4 and not word.endswith("ss") else word
        for word in _EN_WORD_RE.findall(lowered)
        if word not in _EN_STOPWORDS
    }
    tokens.update(_OTHER_WORD_RE.findall(lowered))
    for run in _HAN_RUN_RE.findall(lowered):
        for i in range(len(run) - 1):
            pair = run[i : i + 2]
            if pair[0] not in _ZH_STOP_CHARS and pair[1] not in _ZH_STOP_CHARS:
                tokens.add(pair)
    return frozenset(tokens)


def _score(sentences: list[Sentence]) -> None:
    """Term frequency over the meeting, normalised by sentence length.

    Sentences near the start (the agenda) and the end (the wrap-up) get a
    small lift; questions and very short sentences are rarely key points.
    """
    frequency: Counter[str] = Counter()
    for sentence in sentences:
        frequency.update(sentence.tokens)
    count = len(sentences)
    for sentence in sentences:
        if len(sentence.tokens) < 3:
            continue
        weight = sum(math.log1p(frequency[token]) for token in sentence.tokens)
        score = weight / math.sqrt(len(sentence.tokens))
        if sentence.position < count * 0.15 or sentence.position >= count * 0.9:
            score *= 1.1
        if sentence.text.endswith(("?", "？")):
            score *= 0.5
        sentence.score = score


def _key_point_count(sentence_count: int) -> int:
    return max(3, min(8, round(math.sqrt(sentence_count) / 1.5)))


def _key_points(sentences: list[Sentence], count: int) -> list[Sentence]:
    """The best-scoring sentences that do not repeat each other, in meeting order."""
    # A meeting of nothing but short replies still gets its fullest sentences.
    candidates = [s for s in sentences if s.score > 0] or [
        s for s in sentences if s.tokens
    ]
    # Enough candidates to fill ``count`` after dropping near-duplicates.
    ranked = heapq.nsmallest(
        count * 8, candidates, key=lambda s: (-s.score, -len(s.tokens), s.position)
    )
    chosen: list[Sentence] = []
    for sentence in ranked:
        if len(chosen) == count:
            break
        if all(_overlap(sentence.tokens, other.tokens) < 0.6 for other in chosen):
            chosen.append(sentence)
    return sorted(chosen, key=lambda s: s.position)


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


# --- cue words ----------------------------------------------------------------


@dataclass(frozen=True)
class _Cue:
    """A pattern over lower-cased text, guarded by substrings every match holds.

    Checking the substrings first (``in`` runs at C speed) skips the regex for
    most sentences, which keeps multi-megabyte transcripts fast.
    """

    pattern: re.Pattern[str]
    keywords: tuple[str, ...]

    def count(self, lowered: str) -> int:
        if not any(keyword in lowered for keyword in self.keywords):
            return 0
        return len(self.pattern.findall(lowered))


def _cue(pattern: str, keywords: str) -> _Cue:
    return _Cue(re.compile(pattern), tuple(keywords.split("|")))


# --- decisions ---------------------------------------------------------------

_DECISION = _cue(
    r"\b(?:we(?:'ll| will| are going to) go (?:with|for)|let's go (?:with|for)"
    r"|go ahead with|decided|decide on|(?:final|the|our) decision (?:is|was)"
    r"|made (?:a|the) decision|agreed|we(?: all)? agree"
    r"|(?:all|everyone|everybody) agree|agree (?:on|that|to)|settled on"
    r"|stick with|that's settled|we'll use|we will use"
    r"|let's (?!see|just|not|say|hope|wait|think|start|begin|move|go\b|get started"
    r"|have a look|talk|discuss|look|check|try|hear))"
    r"|(?<![不没未])决定(?!性)|(?<![不没])确定(?!性)|(?<![不没])同意|就这么定"
    r"|就这么办|定下来|达成一致|一致认为|敲定|拍板|就按这个",
    "go with|go for|go ahead|decide|decision|agree|settled|stick with|ll use"
    "|will use|let's|决定|确定|同意|就这么|定下来|一致|敲定|拍板|就按这个",
)
_MAX_DECISIONS = 6


def _decisions(sentences: list[Sentence]) -> list[Sentence]:
    """Sentences with a decision cue; a bare "Agreed." stands for what it agrees to."""
    found: dict[int, Sentence] = {}
    for sentence in sentences:
        if sentence.text.endswith(("?", "？")) or not _DECISION.count(sentence.lowered):
            continue
        if len(sentence.tokens) >= 3:
            found[sentence.position] = sentence
        elif sentence.position > 0:
            proposal = sentences[sentence.position - 1]
            if len(proposal.tokens) >= 3 and not proposal.text.endswith(("?", "？")):
                found[proposal.position] = proposal
    best = heapq.nsmallest(
        _MAX_DECISIONS, found.values(), key=lambda s: (-s.score, s.position)
    )
    return sorted(best, key=lambda s: s.position)


# --- action items ------------------------------------------------------------

_WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october"
    "|november|december"
)
# Cues that on their own mark a task: an assignment, an offer, a request.
_STRONG_ACTION = _cue(
    r"\b(?:action items?|to-?do|follow(?:ing)? up|take care of|responsible for"
    r"|in charge of|assign(?:ed)?|deadline|by (?:next|the end of|tomorrow"
    rf"|{_WEEKDAYS})|before (?:the )?next meeting|i'll(?! be\b)|i will(?! be\b)"
    r"|i'm going to|i am going to|i shall|let me|want me to"
    r"|(?:could|can|would) you(?! hear| see| remember| imagine| believe| tell)"
    r"|you (?:do|look|take|handle|check|could look|should look)"
    r"|will (?:send|prepare|look into|check|draft|write|contact|email|set up"
    r"|organi[sz]e|schedule|update|finish|review|investigate))\b"
    r"|负责(?!人)|跟进|落实|下一步|待办|截止|尽快|会后|我来(?!自|说|讲)|我去(?!年|过)"
    r"|你来(?!说|讲)|你去(?!年|过)|请你|麻烦你|安排",
    "action|to do|todo|to-do|follow|take care|responsible|in charge|assign"
    "|deadline|by |next meeting|i'll|i will|i'm going|i am going|i shall|let me"
    "|want me|you|will |负责|跟进|落实|下一步|待办|截止|尽快|会后|我来|我去|你来"
    "|你去|请你|麻烦你|安排",
)
# A subject right before an obligation or plan: "we need to", "我们需要".
_WEAK_ACTION = _cue(
    r"\b(?:i|we|you)(?:'ll| will| need to| have to| must| should|'re going to"
    r"| are going to|'m going to| am going to| gotta| gonna)\b|\bnext steps?\b"
    r"|(?:我们|咱们|我|你们|你)(?:这边|下周|明天|会后|之后|后续)?"
    r"(?:需要|要去|要做|要把|得去|准备|计划|会去|会把)",
    "'ll| will| need to| have to| must| should| going to| gotta| gonna|next step"
    "|需要|要去|要做|要把|得去|准备|计划|会去|会把",
)
_NEGATION_RE = re.compile(r"n't\b|\bnot\b|\bnever\b|不需要|不用|不要|没有")
_REQUEST_RE = re.compile(
    r"\b(?:could you|can you|would you|want me to)\b|请你|麻烦你", re.IGNORECASE
)
_SELF_RE = re.compile(
    r"\b(?:i'll|i will|i'm going to|i am going to|i need to|i have to|i shall"
    r"|i can|let me|want me to)\b|我来|我去|我会|我负责|我这边",
    re.IGNORECASE,
)
_ADDRESSEE_RE = re.compile(
    r"\b(?:could|can|would|will) you\b|\byou(?:'ll| will| could| should| can"
    r"| need to| have to| must| do| look| take| handle| check| make| send| prepare"
    r"| find| come up)\b|你来|你去|请你|麻烦你|你负责",
    re.IGNORECASE,
)
_TEAM_RE = re.compile(
    r"\b(?:we|we'll|let's|everyone|everybody)\b|我们|大家|咱们", re.IGNORECASE
)
# Only mid-sentence: a capitalised first word is as likely "Price will" as a name.
_NAMED_EN_RE = re.compile(
    r"(?<=[a-z,] )([A-Z][a-z]+)"
    r"(?: will|'ll| is going to| needs to| has to| should| can)\b"
)
_NAMED_ZH_RE = re.compile(
    r"(?:由|请|让)([\u4e00-\u9fff]{2,3}?)(?:来|去)?(?:负责|跟进|准备|处理|落实)"
)
_NOT_A_NAME = frozenset(
    """It That This There So And But Then Now Well Yeah Okay We You They He She
    What Which Who Everyone Everybody Someone Somebody Nobody Maybe Also Just
    One Each Nothing Something Anyone Anybody I 我们 你们 他们 大家 我 你""".split()
)
_DUE_EN_RE = re.compile(
    r"\b(?:(?:by|before|until|due|for) (?:the )?)?"
    r"(?:end of (?:the )?(?:day|week|month)"
    rf"|next (?:week|month|meetings?|{_WEEKDAYS})|tomorrow|tonight|{_WEEKDAYS}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?(?: of)? (?:{_MONTHS})"
    rf"|(?:{_MONTHS}) \d{{1,2}}(?:st|nd|rd|th)?)\b",
    re.IGNORECASE,
)
_DUE_ZH_RE = re.compile(
    r"(?:明天|后天|月底|年底|下个月|下次会议|[本这下]周[一二三四五六日天]?"
    r"|下个?星期[一二三四五六日天]?|周[一二三四五六日天]|星期[一二三四五六日天]"
    r"|\d{1,2}月\d{1,2}[日号])(?:之前|以前|前)?"
    # "今天" alone is mostly "today we ...", a deadline only with 之前/内.
    r"|(?:今天|今晚)(?:之前|以前|前|内)"
)
_ACK_WORDS = 12  # a reply this short right after a request reads as taking it on
_MAX_ACTIONS = 12


def _actions(meeting: Meeting, speakers: set[str]) -> list[ActionItem]:
    """Sentences with action cues, each with its owner and due date if found."""
    candidates: list[tuple[float, Sentence]] = []
    for sentence in meeting.sentences:
        lowered = sentence.lowered
        strong = _STRONG_ACTION.count(lowered)
        weak = _WEAK_ACTION.count(lowered)
        if not strong and not (weak and not _NEGATION_RE.search(lowered)):
            continue
        if lowered.endswith(("?", "？")) and not _REQUEST_RE.search(lowered):
            continue
        if len(sentence.tokens) < 2:
            continue
        candidates.append((2 * strong + weak + sentence.score / 10, sentence))

    best = heapq.nsmallest(
        _MAX_ACTIONS, candidates, key=lambda item: (-item[0], item[1].position)
    )
    chosen = sorted((sentence for _, sentence in best), key=lambda s: s.position)
    return [
        ActionItem(
            owner=_owner(sentence, meeting.turns, speakers),
            task=_display(sentence.text),
            due=_due(sentence.text),
            position=sentence.position,
        )
        for sentence in chosen
    ]


def _owner(
    sentence: Sentence, turns: list[tuple[str | None, str]], speakers: set[str]
) -> str | None:
    """A named person, else whoever a request went to, else the speaker."""
    text = sentence.text
    for mention in _speaker_names_re(speakers).finditer(text):
        if mention.group(0) != sentence.speaker:
            return mention.group(0)
    for pattern in (_NAMED_EN_RE, _NAMED_ZH_RE):
        named = pattern.search(text)
        if named and named.group(1) not in _NOT_A_NAME:
            return named.group(1)
    if _SELF_RE.search(text):
        return sentence.speaker
    addressee = _ADDRESSEE_RE.search(text)
    # "You look at ..." or "could you ...", not "as you say, we ...".
    if addressee and (addressee.start() < 25 or _REQUEST_RE.search(text)):
        return _acknowledger(sentence, turns)
    if _TEAM_RE.search(text):
        return None
    return sentence.speaker


def _speaker_names_re(speakers: set[str]) -> re.Pattern[str]:
    """Speaker labels as whole words; one-letter labels would match anything."""
    names = sorted((n for n in speakers if len(n) >= 2), key=lambda n: (-len(n), n))
    if not names:
        return re.compile(r"(?!)")
    alternatives = [
        ("" if not n[0].isascii() else r"(?<!\w)")
        + re.escape(n)
        + ("" if not n[-1].isascii() else r"(?!\w)")
        for n in names
    ]
    return re.compile("|".join(alternatives))


def _acknowledger(
    sentence: Sentence, turns: list[tuple[str | None, str]]
) -> str | None:
    """The speaker of a short reply right after a request ("Yep.", "好的。")."""
    if sentence.turn + 1 >= len(turns):
        return None
    speaker, reply = turns[sentence.turn + 1]
    if speaker is None or speaker == sentence.speaker:
        return None
    if len(reply.split()) > _ACK_WORDS or len(reply) > _ACK_WORDS * 6:
        return None
    return speaker


def _due(text: str) -> str | None:
    match = _DUE_EN_RE.search(text) or _DUE_ZH_RE.search(text)
    return match.group(0) if match else None


# --- writing -------------------------------------------------------------------

_FILLER_RE = re.compile(
    r"(?<![\w'-])(?:uh-huh|mm-hmm|uh|um|umm|erm|hmm|mm|ah)(?![\w'-])[,.]?|[嗯呃]+[，,。]?",
    re.IGNORECASE,
)
# "the the", "the only the only": restarts of up to three words.
_REPEAT_RE = re.compile(r"\b(\w+(?:\s+\w+){0,2})(?:\s+\1\b)+", re.IGNORECASE)
_OPENING_RE = re.compile(
    r"^(?:(?:so|and|okay|ok|well|right|yeah|yes|alright|but|then|now|oh)\b[,\s]*)+"
    r"|^(?:(?:那么|然后|所以|那|好的|好|对|就是)[，,\s]*)+",
    re.IGNORECASE,
)


def _display(text: str) -> str:
    """A sentence as quoted in the output: no fillers, restarts or openers.

    Run only on the few sentences that are shown, not the whole transcript.
    """
    tidy = " ".join(_FILLER_RE.sub(" ", text).split())
    tidy = _REPEAT_RE.sub(r"\1", tidy)
    tidy = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", tidy)
    tidy = _OPENING_RE.sub("", tidy).strip(" ,，") or text
    tidy = tidy[0].upper() + tidy[1:]
    if len(tidy) <= MAX_SHOWN_CHARS:
        return tidy
    return tidy[: MAX_SHOWN_CHARS - 1].rstrip() + "…"


_LABELS = {
    "zh": {
        "minutes": "会议纪要",
        "summary": "会议摘要",
        "action_items": "行动项",
        "time": "会议时间",
        "participants": "参会人",
        "key_points": "要点",
        "decisions": "决定",
        "turn": "{n} 次发言",
        "turns": "{n} 次发言",
        "no_speakers": "转写中未标注发言人。",
        "no_decisions": "未发现明确的决定。",
        "no_actions": "未发现明确的行动项。",
        "owner_unknown": "待定",
        "due": "截止",
        "decision": "决定",
        "footer": "本文档由离线抽取生成，未使用大模型。",
        "lead": "本次会议共有 {n} 位发言人（{names}），共 {turns} 次发言。",
        "lead_unlabelled": "本次会议转写共 {sentences} 句，未标注发言人。",
        "actions_count": "共识别出 {n} 项行动项。",
        "items_summary": "从 {people} 位发言人的会议中识别出 {n} 项行动项。",
        "colon": "：",
        "list_sep": "、",
        "sentence_sep": "",
        "full_stop": "。",
    },
    "en": {
        "minutes": "Meeting minutes",
        "summary": "Summary",
        "action_items": "Action items",
        "time": "Meeting time",
        "participants": "Participants",
        "key_points": "Key points",
        "decisions": "Decisions",
        "turn": "{n} turn",
        "turns": "{n} turns",
        "no_speakers": "The transcript does not name its speakers.",
        "no_decisions": "No explicit decisions found.",
        "no_actions": "No explicit action items found.",
        "owner_unknown": "unassigned",
        "due": "due",
        "decision": "Decision",
        "footer": (
            "Written offline by extraction from the transcript, "
            "without a language model."
        ),
        "lead": "{n} participants ({names}) spoke in {turns} turns.",
        "lead_unlabelled": (
            "The transcript has {sentences} sentences and no named speakers."
        ),
        "actions_count": "{n} action items found.",
        "items_summary": "{n} action items from a meeting of {people} participants.",
        "colon": ": ",
        "list_sep": ", ",
        "sentence_sep": " ",
        "full_stop": ".",
    },
}


class _Writer:
    """Renders one ``Meeting`` as minutes, a summary or action items."""

    def __init__(
        self,
        meeting: Meeting,
        language: str,
        task_name: str,
        meeting_time: datetime | None,
    ) -> None:
        self.meeting = meeting
        self.labels = _LABELS[language]
        self.task_name = " ".join(task_name.split())
        self.meeting_time = meeting_time

    def minutes(self) -> str:
        labels = self.labels
        lines = self._heading("minutes")
        lines += ["", f"## {labels['participants']}", ""]
        if self.meeting.participants:
            for name, turns in self.meeting.participants:
                turns_text = labels["turn" if turns == 1 else "turns"].format(n=turns)
                lines.append(f"- {name}{labels['colon']}{turns_text}")
        else:
            lines.append(labels["no_speakers"])
        lines += ["", f"## {labels['key_points']}", ""]
        lines += [f"- {self._quote(s)}" for s in self.meeting.key_points]
        lines += ["", f"## {labels['decisions']}", ""]
        lines += [f"- {self._quote(s)}" for s in self.meeting.decisions] or [
            labels["no_decisions"]
        ]
        lines += ["", f"## {labels['action_items']}", ""]
        lines += self._action_lines()
        return self._finish(lines)

    def summary(self) -> str:
        labels = self.labels
        points = self.meeting.key_points
        # The two best key points make the paragraph; the rest become bullets.
        top = sorted(
            heapq.nsmallest(2, points, key=lambda s: (-s.score, s.position)),
            key=lambda s: s.position,
        )
        paragraph = labels["sentence_sep"].join(
            [self._lead()] + [self._closed(_display(s.text)) for s in top]
        )
        in_paragraph = {s.position for s in top}
        bullets = [
            f"- {self._quote(s)}" for s in points if s.position not in in_paragraph
        ]
        bullets = bullets[:4]
        bullets += [
            f"- **{labels['decision']}**{labels['colon']}{_display(s.text)}"
            for s in self.meeting.decisions[:2]
        ]
        bullets.append(
            f"- {labels['actions_count'].format(n=len(self.meeting.actions))}"
        )
        lines = self._heading("summary") + ["", paragraph, "", *bullets]
        return self._finish(lines)

    def action_items_markdown(self) -> str:
        lines = self._heading("action_items") + [""] + self._action_lines()
        return self._finish(lines)

    def action_items_data(self, *, full: bool) -> dict[str, Any]:
        labels = self.labels
        data: dict[str, Any] = {
            "items": [
                {"owner": item.owner, "task": item.task, "due": item.due}
                for item in self.meeting.actions
            ],
            "summary": labels["items_summary"].format(
                n=len(self.meeting.actions), people=len(self.meeting.participants)
            ),
        }
        if full:
            data["participants"] = [
                {"name": name, "turns": turns}
                for name, turns in self.meeting.participants
            ]
            data["key_points"] = [_display(s.text) for s in self.meeting.key_points]
            data["decisions"] = [_display(s.text) for s in self.meeting.decisions]
        return data

    def _heading(self, kind: str) -> list[str]:
        labels = self.labels
        lines = [f"# {labels[kind]}{labels['colon']}{self.task_name}"]
        if self.meeting_time is not None:
            when = self.meeting_time.isoformat(sep=" ", timespec="minutes")
            lines += ["", f"**{labels['time']}**{labels['colon']}{when}"]
        return lines

    def _lead(self) -> str:
        labels = self.labels
        participants = self.meeting.participants
        if not participants:
            return labels["lead_unlabelled"].format(
                sentences=len(self.meeting.sentences)
            )
        names = labels["list_sep"].join(name for name, _ in participants[:6])
        if len(participants) > 6:
            names += "…"
        return labels["lead"].format(
            n=len(participants), names=names, turns=len(self.meeting.turns)
        )

    def _closed(self, text: str) -> str:
        """``text`` ending in a full stop, so quoted sentences read as a paragraph."""
        if text.endswith(tuple(".!?…。！？；;")):
            return text
        return text + self.labels["full_stop"]

    def _quote(self, sentence: Sentence) -> str:
        text = _display(sentence.text)
        if sentence.speaker is None:
            return text
        return f"**{sentence.speaker}**{self.labels['colon']}{text}"

    def _action_lines(self) -> list[str]:
        labels = self.labels
        if not self.meeting.actions:
            return [labels["no_actions"]]
        lines = []
        for item in self.meeting.actions:
            owner = item.owner or labels["owner_unknown"]
            line = f"- [ ] **{owner}**{labels['colon']}{item.task}"
            if item.due:
                line += f" ({labels['due']}{labels['colon']}{item.due})"
            lines.append(line)
        return lines

    def _finish(self, lines: Iterable[str]) -> str:
        return "\n".join([*lines, "", "---", "", f"_{self.labels['footer']}_", ""])
