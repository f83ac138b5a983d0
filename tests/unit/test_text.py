"""``storable``: what PostgreSQL refuses is removed, and nothing else changes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.text import storable, storable_text

# NUL, both halves of a surrogate pair alone, and the characters of the
# escape ``\u0000`` itself, so that a string can spell the escape literally.
HOSTILE = st.text(
    alphabet=st.sampled_from(
        ["a", "é", "🚀", "\x00", "\ud83d", "\ude80", "\\", "u", "0"]
    ),
    max_size=12,
)
LEAVES = (
    HOSTILE
    | st.text()
    | st.integers()
    | st.integers(min_value=2**64, max_value=2**80)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(HOSTILE | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


def _expected(value: Any) -> Any:
    """``storable_text`` on every string and key, containers rebuilt."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _expected(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_expected(v) for v in value]
    return value


def test_storable_text__drops_nuls_and_replaces_lone_surrogates() -> None:
    assert storable_text("a\x00b") == "ab"
    assert storable_text("lone:\ud83d|") == "lone:\ufffd|"
    assert storable_text("pair:🚀 مرحبا") == "pair:🚀 مرحبا"


def test_storable__a_clean_value_comes_back_as_it_is() -> None:
    value = {"text": "# Minutes\n\n🚀 مرحبا", "usage": {"n": 3}, "items": [1.5, None]}

    assert storable(value) is value


def test_storable__cleans_strings_keys_and_nested_values() -> None:
    value = {"te\x00xt": ["a\x00", ("\ud800", {"k": "\udfff!"})], 1: "x"}

    assert storable(value) == {"text": ["a", ["\ufffd", {"k": "\ufffd!"}]], "1": "x"}


def test_storable__the_escape_spelled_out_is_text_not_a_nul() -> None:
    value = {"text": "write \\u0000 for NUL"}

    assert storable(value) == value


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_storable__same_document_as_cleaning_every_string(value: Any) -> None:
    result = storable(value)

    document = json.dumps(result, ensure_ascii=False)
    assert document == json.dumps(_expected(value), ensure_ascii=False)
    assert "\\u0000" not in json.dumps(result).replace("\\\\", "")
    document.encode("utf-8")  # no lone surrogate left anywhere
