"""JSON as Go's encoding/json reads and writes it, bounded for untrusted input.

Encoding is byte-identical to Go's: <, > and & escaped (HTML-safe), U+2028 and U+2029
escaped, non-ASCII written as UTF-8, compact output. A RawMessage is compacted and
escaped the same way.

Decoding (`decode`) is strict and exception-total: every failure is one `JSONError`
(a ValueError) with a short reason, whatever the input. Before Python's parser runs,
the text is checked against a size limit and a nesting-depth pre-scan, so 100,000 open
brackets are one error, never a RecursionError. NaN/Infinity, out-of-range numbers, text
that is not UTF-8 and lone UTF-16 surrogates (``"\\ud800"``) are errors too; Go would
replace the last two with U+FFFD, but such bytes never come from a real flannel.

Struct fields are matched as Go does (`field`): case-insensitively with Go's simple case
folding (``ſ`` folds to ``S``, the Kelvin sign to ``K``), and among keys that match
the same field, the LAST one in the document wins, because Go assigns each key in
order (golang/go#43664, #47984). Objects decode to dicts ordered by each key's last
occurrence, which is what makes that rule a plain scan.
"""
from __future__ import annotations

import array
import itertools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from flannel_ext._util.errors import FlannelExtError

MAX_DEPTH = 64             # nesting levels; flannel's own values use 2
MAX_BYTES = 1 << 20        # default size limit of one document

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
# Go's foldName for ASCII field names: ASCII letters upper-cased, plus the two non-ASCII
# runes whose simple fold orbit holds an ASCII letter (U+017F long s, U+212A Kelvin).
_FOLD = {**{c: c - 32 for c in range(ord("a"), ord("z") + 1)}, 0x17F: ord("S"), 0x212A: ord("K")}
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = str.maketrans({"[": "\x01", "{": "\x01", "]": "\xff", "}": "\xff"})   # +1 / -1 as signed bytes
_SURROGATE = re.compile("[\ud800-\udfff]")
# A lone surrogate needs a raw one in the text or a \\uD800-\\uDFFF escape: only then walk.
_MAYBE_SURROGATE = re.compile("[\ud800-\udfff]|\\\\u[dD][89abcdefABCDEF]")


class JSONError(FlannelExtError, ValueError):
    """Input that is not a JSON document flannel-ext accepts; the message says why.
    `over_limit` is True when it may be valid JSON, just too big or too deep."""

    def __init__(self, message: str, *, over_limit: bool = False):
        super().__init__(message)
        self.over_limit = over_limit


def _escape(text: str) -> str:
    for raw, esc in _GO_ESCAPES.items():
        text = text.replace(raw, esc)
    return text


def dumps(value: object) -> str:
    """Encode `value` as Go's json.Marshal would (dict key order is kept)."""
    return _escape(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def compact_raw(raw: str) -> str:
    """Compact an already-encoded JSON value (a Go json.RawMessage) as Go re-emits it."""
    return dumps(decode(raw))


def go_fold(name: str) -> str:
    """Go's folded form of a field name: equal folds mean Go matches the names."""
    return name.upper() if name.isascii() else name.translate(_FOLD)


def field_key(obj: Mapping[str, Any], name: str) -> str | None:
    """The key of `obj` whose value Go's decoder puts in struct field `name`: the last one
    that matches it case-insensitively (an exact match included), or None."""
    want, found = go_fold(name), None
    for key in obj:
        if key == name or go_fold(key) == want:
            found = key
    return found


def field(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """The value of struct field `name` as Go decodes `obj` (see `field_key`), or `default`."""
    key = field_key(obj, name)
    return default if key is None else obj[key]


def struct_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Every value of `obj` by `go_fold` of its key, the last match winning: the same
    answers as `field`, in one pass, for reading several fields of one object."""
    return {go_fold(key): value for key, value in obj.items()}


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose order is each key's LAST occurrence, so `field` can scan it."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        obj.pop(key, None)
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONError(f"number {text[:20]} is out of range")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_finite)


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of `text`, brackets inside strings not counted.

    Linear and in C loops: escape pairs go first, then whole strings (with no escapes
    left, `"[^"]*"` cannot backtrack; a regex matching strings with escapes in them takes
    quadratic time on `"\\"\\"\\"...`), then a running sum over the brackets. An escape pair
    outside a string makes the text invalid JSON at that point, and every bracket before
    it, which is all Python's parser could descend into, has been counted exactly.
    """
    plain = _STRING.sub("", _ESCAPE.sub("", text))
    steps = _NOT_BRACKET.sub("", plain).translate(_STEP).encode("latin-1")
    return max(itertools.accumulate(array.array("b", steps)), default=0)


def _check_strings(value: Any) -> None:
    """Reject lone surrogates anywhere (keys included), without recursion."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise JSONError("invalid Unicode: a lone UTF-16 surrogate")
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def decode(text: str | bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one strict JSON document; any problem is a `JSONError` naming it."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
        if len(data) > max_bytes:
            raise JSONError(f"{len(data)} bytes, over the limit of {max_bytes}", over_limit=True)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONError(f"not UTF-8 (byte {exc.start})") from None
    elif not isinstance(text, str):
        raise JSONError(f"a {type(text).__name__}, not text")
    if len(text) > max_bytes:
        raise JSONError(f"{len(text)} characters, over the limit of {max_bytes}", over_limit=True)
    if text.startswith("\ufeff"):
        raise JSONError("starts with a byte-order mark")
    # Cheap first: with no more open brackets than the limit, nothing can nest deeper.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise JSONError(f"nested more than {max_depth} levels deep", over_limit=True)
    try:
        value = _DECODER.decode(text)
    except JSONError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise JSONError(f"invalid JSON: {str(exc)[:200]}") from None
    if _MAYBE_SURROGATE.search(text):
        _check_strings(value)
    return value
