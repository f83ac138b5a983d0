"""Artifact types: the built-in TOML files and loading extra ones from a folder."""

from __future__ import annotations

import jsonschema
import pytest

from shared.artifact_types import TEMPLATE_FIELDS, load_artifact_types
from shared.errors import ConfigurationError

BUILTIN = load_artifact_types()

_MINIMAL_TYPE = """
model = "claude-sonnet-4-5"
max_tokens = 100
system_prompt = "Be brief."
user_template = "{transcript}"

[title]
en = "Decisions"
"""


def test_load_artifact_types__ships_the_three_builtins():
    assert set(BUILTIN) == {"meeting_minutes", "summary", "action_items"}
    assert all(t.source.startswith("built-in ") for t in BUILTIN.values())


@pytest.mark.parametrize(
    ("name", "zh", "en"),
    [
        ("meeting_minutes", "会议纪要", "Meeting minutes"),
        ("summary", "会议摘要", "Summary"),
        ("action_items", "行动项", "Action items"),
    ],
)
def test_builtin__titles_in_both_locales(name, zh, en):
    artifact_type = BUILTIN[name]

    assert artifact_type.title_for("zh-CN") == zh
    assert artifact_type.title_for("en") == en
    assert artifact_type.title_for("fr") == en


@pytest.mark.parametrize(
    ("name", "fmt", "offline_kind"),
    [
        ("meeting_minutes", "markdown", "minutes"),
        ("summary", "markdown", "summary"),
        ("action_items", "json", "action_items"),
    ],
)
def test_builtin__model_format_and_offline_kind(name, fmt, offline_kind):
    artifact_type = BUILTIN[name]

    assert artifact_type.model == "claude-sonnet-4-5"
    assert artifact_type.format == fmt
    assert artifact_type.offline_kind == offline_kind
    assert 1000 <= artifact_type.max_tokens <= 8192
    assert (artifact_type.json_schema is not None) == (fmt == "json")


@pytest.mark.parametrize("name", ["meeting_minutes", "summary", "action_items"])
def test_builtin__prompts_use_every_field_and_ask_for_the_transcripts_language(name):
    artifact_type = BUILTIN[name]

    for placeholder in TEMPLATE_FIELDS:
        assert "{" + placeholder + "}" in artifact_type.user_template
    assert "language of the transcript" in artifact_type.system_prompt
    assert "never invent" in artifact_type.system_prompt.lower()


def test_render_user_prompt__fills_fields_and_keeps_braces_in_the_transcript():
    artifact_type = BUILTIN["meeting_minutes"]

    prompt = artifact_type.render_user_prompt(
        transcript="Ann: the set {a, b} and {task_name} stay as typed",
        task_name="Weekly sync",
        meeting_time="2024-05-01T10:00:00+08:00",
        language="auto",
    )

    assert "Meeting name: Weekly sync" in prompt
    assert "Meeting time: 2024-05-01T10:00:00+08:00" in prompt
    assert "Language hint: auto" in prompt
    assert "Ann: the set {a, b} and {task_name} stay as typed" in prompt


@pytest.mark.parametrize(
    "data",
    [
        {"items": []},
        {"items": [{"owner": None, "task": "Send the slides", "due": None}]},
        {
            "items": [{"owner": "Marketing", "task": "看竞品", "due": "下周五"}],
            "summary": "One follow-up.",
        },
    ],
)
def test_action_items_schema__accepts_well_formed_items(data):
    jsonschema.validate(data, BUILTIN["action_items"].json_schema)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"items": {}},
        {"items": [{"owner": None, "due": None}]},
        {"items": [{"owner": None, "task": "", "due": None}]},
        {"items": [{"owner": 3, "task": "Send", "due": None}]},
        {"items": [{"task": "Send"}]},
        {"items": [], "summary": 5},
    ],
)
def test_action_items_schema__rejects_malformed_items(data):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, BUILTIN["action_items"].json_schema)


def test_load_artifact_types__a_folder_adds_types_and_overrides_builtins(tmp_path):
    (tmp_path / "decisions.toml").write_text(_MINIMAL_TYPE, encoding="utf-8")
    (tmp_path / "summary.toml").write_text(
        _MINIMAL_TYPE.replace('"Decisions"', '"Short summary"'), encoding="utf-8"
    )

    types = load_artifact_types(tmp_path)

    assert set(types) == {"meeting_minutes", "summary", "action_items", "decisions"}
    assert types["decisions"].format == "markdown"
    assert types["decisions"].offline_kind == "minutes"
    assert types["summary"].title_for("en") == "Short summary"
    assert types["summary"].source == str(tmp_path / "summary.toml")


@pytest.mark.parametrize(
    ("filename", "text", "reason"),
    [
        ("broken.toml", "model = ", "not valid TOML"),
        ("Bad-Name.toml", _MINIMAL_TYPE, "lowercase letters"),
        (
            "nomodel.toml",
            _MINIMAL_TYPE.replace('model = "claude-sonnet-4-5"', ""),
            "'model'",
        ),
        ("zero.toml", _MINIMAL_TYPE.replace("100", "0"), "'max_tokens'"),
        (
            "notranscript.toml",
            _MINIMAL_TYPE.replace('"{transcript}"', '"{task_name}"'),
            "{transcript}",
        ),
        ("noschema.toml", 'format = "json"\n' + _MINIMAL_TYPE, "[json_schema]"),
        (
            "badschema.toml",
            'format = "json"\n' + _MINIMAL_TYPE + '\n[json_schema]\ntype = "thing"\n',
            "invalid json_schema",
        ),
        ("kind.toml", 'offline_kind = "poem"\n' + _MINIMAL_TYPE, "'offline_kind'"),
    ],
)
def test_load_artifact_types__a_bad_file_is_a_configuration_error(
    tmp_path, filename, text, reason
):
    (tmp_path / filename).write_text(text, encoding="utf-8")

    with pytest.raises(ConfigurationError) as caught:
        load_artifact_types(tmp_path)

    assert reason in str(caught.value)
    assert filename.removesuffix(".toml") in str(caught.value)


def test_load_artifact_types__a_missing_folder_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="ARTIFACTD_TYPES_DIR"):
        load_artifact_types(tmp_path / "absent")
