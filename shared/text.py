"""Making arbitrary text storable in PostgreSQL.

``text`` and ``jsonb`` refuse NUL characters, and UTF-8 cannot carry unpaired
surrogates (which Python strings decoded with ``surrogateescape`` or built
from JSON ``\\ud800`` escapes may hold). Both are dropped or replaced here,
at the edges where outside text comes in.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(value: str) -> str:
    """``value`` without NULs, with unpaired surrogates as U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATE.sub("\ufffd", value)
    return value


def storable(value: Any) -> Any:
    """``storable_text`` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value
