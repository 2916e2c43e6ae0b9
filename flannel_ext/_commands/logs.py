"""Logging set-up for the daemon: text lines, or one JSON object per line (--log-format json)."""
from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 6), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        trace = getattr(record, "trace", None)
        if trace:
            doc.update(trace)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(fmt: str = "text", level: str = "INFO", node: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        prefix = f"[{node}] " if node else ""
        formatter = logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname).1s {prefix}%(name)s: %(message)s",
                                      "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "kubernetes", "watchdog", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
