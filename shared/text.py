"""Making arbitrary text storable in PostgreSQL.

``text`` and ``jsonb`` refuse NUL characters, and UTF-8 cannot carry unpaired
surrogates (which Python strings decoded with ``surrogateescape`` or built
from JSON ``\\ud800`` escapes may hold). Both are dropped or replaced here,
at the edges where outside text comes in.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(value: str) -> str:
    """``value`` without NULs, with unpaired surrogates as U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if value.isascii():  # a flag CPython keeps: no surrogates, nothing to scan
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATE.sub("\ufffd", value)
    return value


def storable(value: Any) -> Any:
    """``storable_text`` applied to every string inside a JSON-like value.

    A value with nothing to change comes back as it is (not copied).
    """
    if _already_storable(value):
        return value
    return _storable(value)


def _already_storable(value: Any) -> bool:
    """True if no string (or key) in ``value`` holds a NUL or a surrogate.

    One pass of orjson, in C, answers for the whole value: it refuses
    unpaired surrogates and writes a NUL as the escape ``\\u0000``. A value
    it refuses for any other reason (a key that is not a string, an integer
    beyond 64 bits, a type it does not know) goes the slow way, and so does
    a string that holds the six characters ``\\u0000`` themselves.
    """
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return b"\\u0000" not in encoded


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value
