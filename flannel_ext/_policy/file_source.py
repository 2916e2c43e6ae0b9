"""The `file:PATH` policy source: one JSON document, replaced atomically by its writer.

``{"generation": N, "namespaces": [...], "pods": [...], "networkpolicies": [...]}`` (the
lab writes it). The directory is watched (watchdog), so every rename into place is seen;
a document that cannot be read is reported to the agent, which keeps enforcing the last
good one.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable

from watchdog.events import (FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from flannel_ext._policy.compute import Cluster
from flannel_ext._policy.model import PolicyRejected

log = logging.getLogger("flannel_ext.policy")
POLL = 1.0   # how often the file is looked at when inotify cannot be had


def read_document(path: str) -> Cluster:
    """Parse the file; PolicyRejected (kind "document") when it is not a valid document."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise PolicyRejected("document", path, "", f"cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise PolicyRejected("document", path, "", f"not valid JSON: {exc}") from None
    return Cluster.from_document(doc, path)


class FileSource(FileSystemEventHandler):
    """Calls `deliver(cluster_or_error)` at start (if the file exists) and on each change."""

    def __init__(self, path: str, deliver: Callable[[Cluster | Exception], None]):
        self.path = os.path.abspath(path)
        self.deliver = deliver
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()
        self._last_stat: tuple | None = None
        self._stopped = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            observer = Observer()   # takes an inotify instance
            # Writes in place end in IN_CLOSE_WRITE, writes by rename in IN_MOVED_TO; the rest of
            # the directory's traffic (the lab's store lives beside cluster.json) is not asked for.
            observer.schedule(self, os.path.dirname(self.path), recursive=False,
                              event_filter=[FileClosedEvent, FileCreatedEvent, FileMovedEvent])
            observer.start()
            self._observer = observer
        except OSError as exc:   # inotify limits: enforcement must not stop, so look every POLL s
            log.warning("policy file %s: no file events (%s); looking every %gs", self.path, exc, POLL)
            self._poller = threading.Thread(target=self._poll, name="policy-file-poll", daemon=True)
            self._poller.start()
        self._load(force=True)

    def _poll(self) -> None:
        while not self._stopped.wait(POLL):
            self._load()

    def stop(self) -> None:
        self._stopped.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._poller is not None:
            self._poller.join(timeout=5)

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.path.abspath(str(p)) for p in (event.src_path, getattr(event, "dest_path", "")) if p}
        if self.path in paths:
            self._load()

    def _load(self, force: bool = False) -> None:
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                if force:
                    log.info("policy file %s does not exist yet; waiting for it", self.path)
                return
            # A rename and the writes before it arrive as several events: read each inode once.
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key == self._last_stat and not force:
                return
            self._last_stat = key
            try:
                cluster: Cluster | Exception = read_document(self.path)
            except PolicyRejected as exc:
                cluster = exc
        self.deliver(cluster)
