"""Logging set-up for the daemon: text lines, or one JSON object per line (--log-format json).

A log line often quotes another node's data (a lease key, a node name, a rejection
reason), so every message is one line whatever it quotes: control characters (newline,
carriage return, ESC...), Unicode line/paragraph separators, bidirectional overrides and
lone surrogates are written as escapes (``\\n``, ``\\x1b``, ``\\u202e``). Nobody who can
write a lease can forge a log line. Tracebacks keep their lines (they are ours).
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def one_line(text: str) -> str:
    """`text` with every character that could break or disguise a log line escaped."""
    return _UNSAFE.sub(_escape_char, text)


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 6), "level": record.levelname.lower(),
               "logger": record.name, "msg": one_line(record.getMessage())}
        trace = getattr(record, "trace", None)
        if trace:
            doc.update(trace)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # A lone surrogate in a trace field cannot be written as UTF-8: escape it.
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def setup(fmt: str = "text", level: str = "INFO", node: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        prefix = f"[{one_line(node).replace('%', '%%')}] " if node else ""
        formatter = TextFormatter(f"%(asctime)s.%(msecs)03d %(levelname).1s {prefix}%(name)s: %(message)s",
                                  "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "kubernetes", "watchdog", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
