"""Artifact types: data, not code.

Each type is a TOML file: the built-ins ship in ``shared/types/``; more come
from ``ARTIFACTD_TYPES_DIR`` and override built-ins of the same name. A type
names its title per locale, model, ``max_tokens``, prompts and output format
(``markdown``, or ``json`` with a JSON Schema the output must pass).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema

from shared.errors import ConfigurationError

TYPE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
TEMPLATE_FIELDS = ("transcript", "task_name", "meeting_time", "language")


@dataclass(frozen=True)
class ArtifactType:
    name: str
    title: dict[str, str]
    model: str
    max_tokens: int
    system_prompt: str
    user_template: str
    format: Literal["markdown", "json"] = "markdown"
    json_schema: dict[str, Any] | None = None
    # Which extractive writer the offline generator uses for this type.
    offline_kind: Literal["minutes", "summary", "action_items"] = "minutes"
    source: str = field(default="", compare=False)

    def title_for(self, locale: str) -> str:
        return self.title.get(locale) or self.title.get("en") or self.name

    def render_user_prompt(
        self,
        *,
        transcript: str,
        task_name: str,
        meeting_time: str,
        language: str,
    ) -> str:
        # str.format would interpret braces inside the transcript; the template
        # is ours, so substitute only the known placeholders.
        values = {
            "transcript": transcript,
            "task_name": task_name,
            "meeting_time": meeting_time,
            "language": language,
        }
        return re.sub(
            r"\{(transcript|task_name|meeting_time|language)\}",
            lambda m: values[m.group(1)],
            self.user_template,
        )


def _parse_type(name: str, text: str, source: str) -> ArtifactType:
    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError(f"artifact type {name!r} ({source}): {reason}")

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise bad(f"not valid TOML: {exc}") from exc
    if not TYPE_NAME_RE.match(name):
        raise bad("the file name must be lowercase letters, digits and underscores")
    for key in ("title", "model", "max_tokens", "system_prompt", "user_template"):
        if key not in raw:
            raise bad(f"missing field {key!r}")
    title = raw["title"]
    if not isinstance(title, dict) or not all(
        isinstance(v, str) for v in title.values()
    ):
        raise bad("'title' must be a table of locale = text")
    if not isinstance(raw["max_tokens"], int) or raw["max_tokens"] <= 0:
        raise bad("'max_tokens' must be a positive integer")
    if "{transcript}" not in raw["user_template"]:
        raise bad("'user_template' must contain {transcript}")
    fmt = raw.get("format", "markdown")
    if fmt not in ("markdown", "json"):
        raise bad("'format' must be 'markdown' or 'json'")
    schema = raw.get("json_schema")
    if fmt == "json":
        if not isinstance(schema, dict):
            raise bad("format 'json' needs a [json_schema] table")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise bad(f"invalid json_schema: {exc.message}") from exc
    offline_kind = raw.get(
        "offline_kind", "action_items" if fmt == "json" else "minutes"
    )
    if offline_kind not in ("minutes", "summary", "action_items"):
        raise bad("'offline_kind' must be minutes, summary or action_items")
    return ArtifactType(
        name=name,
        title=dict(title),
        model=str(raw["model"]),
        max_tokens=raw["max_tokens"],
        system_prompt=str(raw["system_prompt"]),
        user_template=str(raw["user_template"]),
        format=fmt,
        json_schema=schema if fmt == "json" else None,
        offline_kind=offline_kind,
        source=source,
    )


def load_artifact_types(types_dir: Path | None = None) -> dict[str, ArtifactType]:
    """Built-in types, then those in ``types_dir`` (which win on a name clash)."""
    types: dict[str, ArtifactType] = {}
    builtin = resources.files("shared") / "types"
    for entry in sorted(builtin.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            name = entry.name.removesuffix(".toml")
            types[name] = _parse_type(
                name, entry.read_text("utf-8"), f"built-in {entry.name}"
            )
    if types_dir is not None:
        if not types_dir.is_dir():
            raise ConfigurationError(
                f"ARTIFACTD_TYPES_DIR: {types_dir} is not a directory"
            )
        for path in sorted(types_dir.glob("*.toml")):
            types[path.stem] = _parse_type(
                path.stem, path.read_text("utf-8"), str(path)
            )
    return types
