"""Calling a hook: timeouts, per-lease results and one trace line per call.

A hook that `runs_commands` (the shell hook) times out and traces each process itself
(it can kill a process group): it gets ``ctx.call_timeout`` and ``ctx.trace_command``.
A Python hook runs on the caller's `SerialWorker`: one call at a time, always; a call
that overruns is reported as `HookTimeout` so the other subnets proceed, and the next
call waits until it has really returned.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from flannel_ext._util.errors import BatchError
from flannel_ext._config.netconf import COMMAND_FIELDS
from flannel_ext._hooks.base import Hook, HookContext, RemoteLease
from flannel_ext._hooks.process import ProcessResult
from flannel_ext._runtime.serial import SerialWorker
from flannel_ext._runtime.stats import HookCall, NodeStats

trace_log = logging.getLogger("flannel_ext.trace")
OUTPUT_IN_TRACE = 300
STUCK = "hook"   # the NodeStats problem filed while a Python hook call has not returned

# The lifecycle steps without a lease, as calls on the hook.
_LIFECYCLE: dict[str, Callable[[Hook, HookContext], Any]] = {
    "pre_startup": lambda hook, ctx: hook.pre_startup(ctx),
    "post_startup": lambda hook, ctx: hook.post_startup(ctx),
    "shutdown": lambda hook, ctx: hook.shutdown(ctx),
}


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_IN_TRACE else text[:OUTPUT_IN_TRACE] + "…"


class HookCaller:
    """Calls one hook for the runtime. `default_timeout` applies unless the hook declares one."""

    def __init__(self, hook: Hook, ctx: HookContext, stats: NodeStats, *, default_timeout: float):
        self.hook, self.ctx, self.stats = hook, ctx, stats
        self.timeout = hook.timeout if hook.timeout is not None else default_timeout
        self.max_concurrent_calls = hook.max_concurrent_calls if hook.runs_commands else 1
        ctx.call_timeout = self.timeout
        ctx.trace_command = self._trace_process
        self._worker = None if hook.runs_commands else SerialWorker(
            f"hook-{type(hook).__name__}", on_stuck=self._stuck, on_unstuck=self._unstuck)

    def close(self) -> None:
        """After the last call (reload, exit): the worker thread ends once idle."""
        if self._worker is not None:
            self._worker.close()

    # --- tracing ------------------------------------------------------------------
    def _emit(self, call: HookCall) -> None:
        self.stats.record_call(call)
        level = logging.INFO if call.ok else logging.WARNING
        rc = "-" if call.returncode is None else call.returncode
        msg = f"hook={call.hook} subnet={call.subnet or '-'} rc={rc} ok={str(call.ok).lower()} " \
              f"duration={call.duration:.3f}s"
        if call.output:
            msg += f" output={call.output!r}"
        if call.error:
            msg += f" error={call.error!r}"
        trace_log.log(level, msg, extra={"trace": {
            "hook": call.hook, "subnet": call.subnet, "rc": call.returncode, "ok": call.ok,
            "duration": round(call.duration, 6), "output": call.output, "error": call.error}})

    def _trace_process(self, name: str, subnet: str, result: ProcessResult) -> None:
        ok = result.returncode == 0 and not result.timed_out
        error = f"timed out after {self.ctx.call_timeout:g}s, process group killed" if result.timed_out else ""
        self._emit(HookCall(name, subnet, ok, result.returncode, result.duration,
                            _short(result.stdout + result.stderr), error))

    def _stuck(self, name: str, timeout: float) -> None:
        self.stats.set_problem(STUCK, f"{name} has not returned {timeout:g}s after it started; "
                                      "later calls wait for it")

    def _unstuck(self, name: str, took: float) -> None:
        self.stats.clear_problem(STUCK)

    # --- calling ------------------------------------------------------------------
    def _timed(self, name: str, subnet: str, fn: Callable[[], Any]) -> Any:
        """Run fn (a Python hook) on the worker with the timeout, tracing the outcome."""
        if self._worker is None:
            return fn()
        start = time.monotonic()
        try:
            value = self._worker.call(name, fn, self.timeout, subnet=subnet)
        except BaseException as exc:
            self._emit(HookCall(name, subnet, False, None, time.monotonic() - start, "",
                                f"{type(exc).__name__}: {exc}"))
            raise
        self._emit(HookCall(name, subnet, True, None, time.monotonic() - start))
        return value

    def lifecycle(self, method: str) -> Any:
        """pre_startup / post_startup / shutdown."""
        call = _LIFECYCLE[method]
        return self._timed(COMMAND_FIELDS[method], "", lambda: call(self.hook, self.ctx))

    def apply(self, kind: str, leases: Sequence[RemoteLease]) -> dict[str, BaseException | None]:
        """Run subnet_add/subnet_remove for a batch; returns key -> None (ok) or the error."""
        batch = self.hook.subnet_add_batch if kind == "add" else self.hook.subnet_remove_batch
        name = COMMAND_FIELDS[f"subnet_{kind}"]
        label = leases[0].key if len(leases) == 1 else f"{len(leases)} subnets"
        results: dict[str, BaseException | None] = {lease.key: None for lease in leases}
        try:
            self._timed(name, label, lambda: batch(list(leases), self.ctx))
        except BatchError as exc:
            for key, error in exc.failures.items():
                if key in results:
                    results[key] = error
        except Exception as exc:  # noqa: BLE001 - every lease of the batch failed
            for key in results:
                results[key] = exc
        return results
