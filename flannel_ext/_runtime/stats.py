"""Counters a running node keeps about itself; read by /metrics, `lab status` and tests.

Thread-safe and dependency-free: the health/metrics server (``_runtime/health.py``) reads a
`NodeStats` and exposes it, so the runtime never imports the layer above it.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Callable


@dataclass
class HookCall:
    """One finished hook call, as traced."""

    hook: str                 # flannel's name: PreStartupCommand, SubnetAddCommand, …
    subnet: str               # lease key, "" for lifecycle hooks
    ok: bool
    returncode: int | None    # None for Python hooks and timeouts
    duration: float           # seconds
    output: str = ""
    error: str = ""
    attempt: int = 1


@dataclass
class NodeStats:
    hook_calls: Counter = field(default_factory=Counter)        # hook -> calls
    hook_failures: Counter = field(default_factory=Counter)     # hook -> failed calls
    hook_seconds: Counter = field(default_factory=Counter)      # hook -> total seconds
    rejected: Counter = field(default_factory=Counter)          # reason -> rejected leases
    leases_known: int = 0
    retries_pending: int = 0
    last_reconcile: float | None = None                         # UNIX time
    ready: bool = False                                         # subnet.env written
    subnet: str = ""
    state_write_error: str = ""                                 # why the state dir cannot be written
    _monitors: list = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_call(self, call: HookCall) -> None:
        with self._lock:
            self.hook_calls[call.hook] += 1
            self.hook_seconds[call.hook] += call.duration
            if not call.ok:
                self.hook_failures[call.hook] += 1
            monitors = list(self._monitors)
        for monitor in monitors:
            monitor(call)

    def record_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def add_monitor(self, callback: Callable[[HookCall], None]) -> Callable[[], None]:
        """Call `callback` after every hook call; returns a function that undoes this."""
        with self._lock:
            self._monitors.append(callback)

        def undo():
            with self._lock:
                if callback in self._monitors:
                    self._monitors.remove(callback)
        return undo

    def mark_reconciled(self) -> None:
        self.last_reconcile = time.time()

    def snapshot(self) -> dict:
        """A JSON-able copy (written to the node's state dir for `lab status`)."""
        with self._lock:
            return {
                "hook_calls": dict(self.hook_calls), "hook_failures": dict(self.hook_failures),
                "hook_seconds": {k: round(v, 6) for k, v in self.hook_seconds.items()},
                "rejected": dict(self.rejected), "leases_known": self.leases_known,
                "retries_pending": self.retries_pending, "last_reconcile": self.last_reconcile,
                "ready": self.ready, "subnet": self.subnet,
                "state_write_error": self.state_write_error,
            }
