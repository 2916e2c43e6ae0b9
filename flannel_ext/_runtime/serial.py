"""One call at a time into a Python hook, with a timeout, on one long-lived thread.

A thread cannot be killed, so a call that overruns its timeout keeps running. The next
call then waits for it to return (up to its own timeout) rather than starting beside it:
recipes need not be thread-safe, even after a timeout. A hook that never returns costs
this one stuck thread, never one per retry, and `on_stuck` / `on_unstuck` let the
runtime report it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flannel_ext._util.errors import HookStillRunning, HookTimeout

log = logging.getLogger("flannel_ext.calls")


class _Job:
    def __init__(self, name: str, fn: Callable[[], Any]):
        self.name, self.fn = name, fn
        self.started = time.monotonic()
        self.done = False
        self.overran = False
        self.value: Any = None
        self.error: BaseException | None = None


class SerialWorker:
    """Runs `call()`s one after another on a single daemon thread."""

    def __init__(self, name: str, *, on_stuck: Callable[[str, float], None] | None = None,
                 on_unstuck: Callable[[str, float], None] | None = None):
        self._cond = threading.Condition()
        self._job: _Job | None = None      # queued or running
        self._closed = False
        self.on_stuck, self.on_unstuck = on_stuck, on_unstuck
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def call(self, name: str, fn: Callable[[], Any], timeout: float, *, subnet: str = "") -> Any:
        """Run `fn` on the worker; its value, or its exception re-raised here.

        Raises `HookStillRunning` if the previous call is still running after `timeout`,
        and `HookTimeout` if this call does not return within `timeout`.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._job is None or self._closed, timeout):
                job = self._job
                assert job is not None
                raise HookStillRunning(name, timeout, running=job.name,
                                       running_for=time.monotonic() - job.started, subnet=subnet)
            if self._closed:
                raise HookTimeout(name, 0, subnet=subnet)   # shutting down: nothing may start
            job = self._job = _Job(name, fn)
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: job.done, timeout):
                job.overran = True
                stuck = True
            else:
                stuck = False
        if stuck:
            if self.on_stuck:
                self.on_stuck(name, timeout)
            raise HookTimeout(name, timeout, subnet=subnet)
        if job.error is not None:
            raise job.error
        return job.value

    def busy(self) -> bool:
        with self._cond:
            return self._job is not None

    def close(self) -> None:
        """No new calls; the thread ends after the call in progress (if any) returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._job is not None and not self._job.done))
                job = self._job
                if job is None or job.done:
                    return   # closed and idle
            job.started = time.monotonic()
            try:
                job.value = job.fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                job.error = exc
            with self._cond:
                job.done = True
                self._job = None
                self._cond.notify_all()
            if job.overran:
                took = time.monotonic() - job.started
                log.warning("%s returned after %.1fs, past its timeout; the next call may start", job.name, took)
                if self.on_unstuck:
                    self.on_unstuck(job.name, took)
