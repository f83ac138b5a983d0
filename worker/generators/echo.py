"""The echo generator: a small fixed document, written at once.

For smoke tests and for measuring the queue's own overhead, so it does as
little as possible: no thread, no progress report, no parsing of the
transcript beyond its length.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import ErrorCode, job_error
from worker.generators.base import GenerationRequest, GenerationResult, ProgressCallback


class EchoGenerator:
    """Writes ``# <type title>`` with the task name and transcript length."""

    name = "echo"

    async def generate(
        self, request: GenerationRequest, report_progress: ProgressCallback
    ) -> GenerationResult:
        # isspace() stops at the first visible character, so this stays cheap.
        if not request.transcript or request.transcript.isspace():
            raise job_error(ErrorCode.INPUT_EMPTY)

        artifact_type = request.artifact_type
        data: Any = None
        if artifact_type.format == "json":
            data = minimal_instance(artifact_type.json_schema or {"type": "object"})
            text = json.dumps(data, ensure_ascii=False)
        else:
            text = (
                f"# {artifact_type.title_for(request.locale)}\n\n"
                f"Task: {request.task_name}\n\n"
                f"Transcript: {len(request.transcript)} characters\n"
            )

        return GenerationResult(
            format=artifact_type.format,
            text=text,
            data=data,
            metadata={
                "generator": "echo",
                "model": "echo",
                "usage": {
                    "input_chars": len(request.transcript),
                    "output_chars": len(text),
                },
            },
        )

    async def aclose(self) -> None:
        return None


def minimal_instance(schema: dict[str, Any]) -> Any:
    """The smallest value that passes ``schema``, for the schemas types use.

    Covers ``const``, ``enum``, the first of ``anyOf``/``oneOf``, ``allOf`` of
    objects, and each JSON type with its required properties, ``minItems``,
    ``minLength`` and ``minimum``. Nullable types give ``None``.
    """
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0])
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = minimal_instance(part)
            if isinstance(value, dict):
                merged.update(value)
        return merged

    kinds = schema.get("type", "object")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if "null" in kinds:
        return None
    kind = kinds[0] if kinds else "object"
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: minimal_instance(properties.get(name, {}))
            for name in schema.get("required", [])
        }
    if kind == "array":
        item = schema.get("items", {})
        return [minimal_instance(item) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * schema.get("minLength", 0)
    if kind in ("integer", "number"):
        minimum = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return max(0, minimum) if "minimum" not in schema else minimum
    if kind == "boolean":
        return False
    return None
