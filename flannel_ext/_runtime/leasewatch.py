"""The runtime's lease watch: one store watch delivering into the inbox, and what happens
when it fails.

A watch that ends is reported once ("watch" problem: /readyz 503 with the reason, one log
line), then restarted with backoff from a fresh `list()`, whose difference from what the
runtime holds is applied, so nothing written meanwhile is missed. Restarts back off
(1 s doubling to 30 s) while a watch keeps failing at once; one that ran a while is
restarted after 1 s.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flannel_ext._stores.base import LeaseStore, Snapshot, Watch
from flannel_ext._runtime.inbox import Inbox, WatchFailed, WatchSink
from flannel_ext._runtime.stats import NodeStats

log = logging.getLogger("flannel_ext.node")
RESTART = (1.0, 30.0)   # delay before restarting a failed watch, doubling
PROBLEM = "watch"


class LeaseWatch:
    def __init__(self, store: LeaseStore, inbox: Inbox, stats: NodeStats,
                 apply: Callable[[Snapshot], None]):
        self.store, self.inbox, self.stats, self.apply = store, inbox, stats, apply
        self.restart_at: float | None = None    # time.monotonic() of the next restart
        self._delay = RESTART[0]
        self._watch: Watch | None = None
        self._sink: WatchSink | None = None

    def start(self, revision: int) -> None:
        self._sink = WatchSink(self.inbox)
        self._watch = self.store.watch(revision, self._sink)

    def stop(self) -> None:
        if self._sink is not None:
            self._sink.retire()
        if self._watch is not None:
            self._watch.close()
        self._watch = self._sink = None

    def failed(self, failure: WatchFailed) -> None:
        if failure.sink is not self._sink:
            return   # a watch we already replaced
        lived = time.monotonic() - failure.sink.started
        self._delay = RESTART[0] if lived > RESTART[1] else min(self._delay * 2, RESTART[1])
        why = f"{type(failure.error).__name__}: {failure.error}"
        log.error("lease watch failed (restarting in %.0fs): %s", self._delay, why)
        self.stats.set_problem(PROBLEM, why)
        self.stop()
        self.restart_at = time.monotonic() + self._delay

    def restart_if_due(self) -> None:
        """List again, apply the difference, and watch from there (or try again later)."""
        if self.restart_at is None or time.monotonic() < self.restart_at:
            return
        self.restart_at = None
        try:
            snapshot = self.store.list()
        except Exception as exc:  # noqa: BLE001 - retried like the watch itself
            self._delay = min(self._delay * 2, RESTART[1])
            log.error("listing leases failed (retrying in %.0fs): %s", self._delay, exc)
            self.restart_at = time.monotonic() + self._delay
            return
        self.apply(snapshot)
        self.start(snapshot.revision)
        self.stats.clear_problem(PROBLEM)
        log.info("lease watch restarted at revision %d", snapshot.revision)
