"""JSON encoding byte-identical to Go's encoding/json, as flannel writes it.

Go escapes <, > and & (HTML-safe), U+2028 and U+2029, writes non-ASCII as UTF-8,
and emits compact output. A RawMessage is compacted and escaped the same way.
"""
from __future__ import annotations

import json

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _escape(text: str) -> str:
    for raw, esc in _GO_ESCAPES.items():
        text = text.replace(raw, esc)
    return text


def dumps(value: object) -> str:
    """Encode `value` as Go's json.Marshal would (dict key order is kept)."""
    return _escape(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def compact_raw(raw: str) -> str:
    """Compact an already-encoded JSON value (a Go json.RawMessage) as Go re-emits it."""
    return dumps(json.loads(raw))


def loads_case_insensitive(obj: dict, name: str, default=None):
    """Look `name` up as Go does: an exact key first, then a case-insensitive match."""
    if name in obj:
        return obj[name]
    low = name.lower()
    for key, value in obj.items():
        if key.lower() == low:
            return value
    return default
