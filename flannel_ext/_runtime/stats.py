"""Counters a running node keeps about itself; read by /metrics, `lab status` and tests.

Thread-safe and dependency-free: the health/metrics server (``_runtime/health.py``) reads a
`NodeStats` and exposes it, so the runtime never imports the layer above it.

Readiness is `ready` (subnet.env written) *and* no open problem: any daemon thread that
fails (the dispatcher, the lease watch, renewal) or a hook call that never returns files
a problem under its own name, and clears it when it recovers, so /readyz answers 503 with
the reason instead of a zombie reporting itself healthy.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


STATE_PROBLEM = "state"   # the problem filed while the state dir cannot be written


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


@dataclass
class NodeStats:
    hook_calls: Counter = field(default_factory=Counter)        # hook -> calls
    hook_failures: Counter = field(default_factory=Counter)     # hook -> failed calls
    hook_seconds: dict[str, float] = field(default_factory=dict)  # hook -> total seconds
    hook_giveups: Counter = field(default_factory=Counter)      # hook -> retries given up
    rejected: Counter = field(default_factory=Counter)          # reason -> rejected leases
    leases_known: int = 0
    retries_pending: int = 0
    last_reconcile: float | None = None                         # UNIX time
    ready: bool = False                                         # subnet.env written
    subnet: str = ""
    problems: dict[str, str] = field(default_factory=dict)      # source -> why not ready
    # Called (outside the lock) after anything changes, so the runtime can write the
    # stats file when they change instead of polling them.
    on_change: Callable[[], None] | None = field(default=None, repr=False)
    _monitors: list = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def record_call(self, call: HookCall) -> None:
        with self._lock:
            self.hook_calls[call.hook] += 1
            self.hook_seconds[call.hook] = self.hook_seconds.get(call.hook, 0.0) + call.duration
            if not call.ok:
                self.hook_failures[call.hook] += 1
            monitors = list(self._monitors)
        for monitor in monitors:
            monitor(call)
        self._changed()

    def record_giveup(self, hook: str) -> None:
        with self._lock:
            self.hook_giveups[hook] += 1
        self._changed()

    def record_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
        self._changed()

    def set_retries_pending(self, count: int) -> None:
        if count != self.retries_pending:
            self.retries_pending = count
            self._changed()

    def set_problem(self, source: str, reason: str) -> None:
        """Mark the daemon unready because of `source` (e.g. "watch"); one line of why."""
        with self._lock:
            changed = self.problems.get(source) != reason
            self.problems[source] = reason
        if changed:
            self._changed()

    def clear_problem(self, source: str) -> None:
        with self._lock:
            changed = self.problems.pop(source, None) is not None
        if changed:
            self._changed()

    @property
    def state_write_error(self) -> str:
        """Why the state dir cannot be written ("" when it can): the "state" problem."""
        with self._lock:
            return self.problems.get(STATE_PROBLEM, "")

    @state_write_error.setter
    def state_write_error(self, reason: str) -> None:
        if reason:
            self.set_problem(STATE_PROBLEM, reason)
        else:
            self.clear_problem(STATE_PROBLEM)

    def is_ready(self) -> bool:
        """What /readyz reports: subnet.env written and nothing failing."""
        with self._lock:
            return self.ready and not self.problems

    def not_ready_reason(self) -> str:
        with self._lock:
            if not self.ready:
                return "subnet.env not written yet"
            return "; ".join(f"{source}: {why}" for source, why in sorted(self.problems.items()))

    def add_monitor(self, callback: Callable[[HookCall], None]) -> Callable[[], None]:
        """Call `callback` after every hook call; returns a function that undoes this."""
        with self._lock:
            self._monitors.append(callback)

        def undo() -> None:
            with self._lock:
                if callback in self._monitors:
                    self._monitors.remove(callback)
        return undo

    def mark_reconciled(self) -> None:
        self.last_reconcile = time.time()
        self._changed()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy (written to the node's state dir for `lab status`)."""
        with self._lock:
            return {
                "hook_calls": dict(self.hook_calls), "hook_failures": dict(self.hook_failures),
                "hook_seconds": {k: round(v, 6) for k, v in self.hook_seconds.items()},
                "hook_giveups": dict(self.hook_giveups),
                "rejected": dict(self.rejected), "leases_known": self.leases_known,
                "retries_pending": self.retries_pending, "last_reconcile": self.last_reconcile,
                "ready": self.ready and not self.problems, "subnet": self.subnet,
                "problems": dict(self.problems), "state_write_error": self.problems.get(STATE_PROBLEM, ""),
            }
