"""The runtime's one queue: lease events, reload and stop requests, stats changes.

Every input of the main loop arrives here, so the loop blocks on one `get` until the
next item or its next deadline (lease renewal, a watch restart): no polling. Stores
deliver straight into it through a `WatchSink` (flannel: one goroutine, one channel).

It is a `queue.SimpleQueue`, whose `put` is reentrant: `request_stop()` may be called
from a signal handler that interrupted the main thread inside `get`.
"""
from __future__ import annotations

import enum
import queue
import time
from dataclasses import dataclass

from flannel_ext._stores.lease import LeaseEvent


class Request(enum.Enum):
    STOP = "stop"
    RELOAD = "reload"
    STATS = "stats"      # the stats changed: write the stats file (throttled)


class Stopped(BaseException):
    """A stop was requested while the runtime waited (a BaseException, so hook retry
    loops that catch every Exception never swallow it)."""


@dataclass
class WatchFailed:
    """The watch fed by `sink` ended with `error`."""

    sink: WatchSink
    error: BaseException


Item = list[LeaseEvent] | Request | WatchFailed


class Inbox:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._deferred: list[Item] = []
        self.stop_requested = False

    def put(self, item: Item) -> None:
        self._queue.put(item)

    def request_stop(self) -> None:
        """Signal-safe: a flag and a reentrant put."""
        self.stop_requested = True
        self._queue.put(Request.STOP)

    def get(self, timeout: float | None) -> Item | None:
        """The next item (deferred ones first), or None once `timeout` passed."""
        if self._deferred:
            return self._deferred.pop(0)
        try:
            return self._queue.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return None

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a retry's backoff) but raise `Stopped` at once on a stop request;
        anything else that arrives meanwhile is kept for the main loop, in order."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if item is not Request.STOP:
                self._deferred.append(item)
        raise Stopped()


class WatchSink:
    """Where one store watch delivers: straight into the inbox. Once `retire()`d (the
    runtime replaced that watch), it drops whatever the old watch still sends."""

    def __init__(self, inbox: Inbox):
        self.inbox = inbox
        self.retired = False
        self.started = time.monotonic()

    def deliver(self, batch: list[LeaseEvent]) -> None:
        if not self.retired:
            self.inbox.put(batch)

    def failed(self, error: BaseException) -> None:
        if not self.retired:
            self.inbox.put(WatchFailed(self, error))

    def retire(self) -> None:
        self.retired = True
