"""Hot reload for `run --watch`: a change to net-conf.json or the Python hook's source asks
the runtime to validate and re-run the lifecycle (the runtime keeps the old dataplane when
the new configuration is invalid)."""
from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from flannel_ext._config.netconf import NetConf
from flannel_ext._hooks.loader import load_hook_file_paths

log = logging.getLogger("flannel_ext.reload")
DEBOUNCE = 0.15  # editors write a file in several steps; wait for the last one


class Reloadable(Protocol):
    config: NetConf

    def request_reload(self) -> None: ...


def watched_files(net_conf: str, config: NetConf) -> set[str]:
    """net-conf.json and the file the configured Python hook comes from (the loader's lookup)."""
    return {os.path.realpath(net_conf)} | {os.path.realpath(p) for p in load_hook_file_paths(config)}


class ReloadWatcher(FileSystemEventHandler):
    def __init__(self, net_conf: str, runtime: Reloadable):
        self.net_conf, self.runtime = net_conf, runtime
        self.observer = Observer()
        self._dirs: set[str] = set()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def _files(self) -> set[str]:
        return watched_files(self.net_conf, self.runtime.config)

    def _schedule(self) -> None:
        for path in self._files():
            directory = os.path.dirname(path)
            if directory not in self._dirs:
                self.observer.schedule(self, directory, recursive=False)
                self._dirs.add(directory)

    def start(self) -> None:
        self._schedule()
        self.observer.start()
        log.info("watching %s for changes", ", ".join(sorted(self._files())))

    def stop(self) -> None:
        with self._lock:
            if self._timer:
                self._timer.cancel()
        self.observer.stop()
        self.observer.join(2)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("modified", "created", "moved", "closed"):
            return
        paths = {os.path.realpath(os.fsdecode(p)) for p in (event.src_path, event.dest_path) if p}
        if not paths & self._files():
            return
        with self._lock:
            if self._timer:
                self._timer.cancel()
            self._timer = threading.Timer(DEBOUNCE, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        log.info("change detected; reloading")
        self.runtime.request_reload()
        self._schedule()
