"""Calling a hook: timeouts, per-lease results and one trace line per call.

Shell hooks time out and trace each process themselves (they can kill a process group).
A Python hook runs in a worker thread; on timeout the call is abandoned (a thread cannot
be killed) and reported as `HookTimeout`, so the other subnets proceed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any
from collections.abc import Callable, Sequence

from flannel_ext._util.errors import BatchError, HookTimeout
from flannel_ext._hooks.base import COMMAND_NAMES, Hook, HookContext, RemoteLease
from flannel_ext._hooks.process import ProcessResult
from flannel_ext._runtime.stats import HookCall, NodeStats

trace_log = logging.getLogger("flannel_ext.trace")
OUTPUT_IN_TRACE = 300


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_IN_TRACE else text[:OUTPUT_IN_TRACE] + "…"


class HookCaller:
    def __init__(self, hook: Hook, ctx: HookContext, stats: NodeStats, *, timeout: float):
        self.hook, self.ctx, self.stats, self.timeout = hook, ctx, stats, timeout
        self.self_managed = bool(getattr(hook, "runs_commands", False))
        if self.self_managed:
            hook.tracer = self._trace_process

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
        error = f"timed out after {self.timeout:g}s, process group killed" if result.timed_out else ""
        self._emit(HookCall(name, subnet, ok, result.returncode, result.duration,
                            _short(result.stdout + result.stderr), error))

    # --- calling ------------------------------------------------------------------
    def _timed(self, name: str, subnet: str, fn: Callable[[], Any]) -> Any:
        """Run fn (a Python hook) in a thread with the timeout, tracing the outcome."""
        if self.self_managed:
            return fn()
        box: dict[str, Any] = {}

        def target():
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc

        start = time.monotonic()
        worker = threading.Thread(target=target, name=f"hook-{name}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        duration = time.monotonic() - start
        if worker.is_alive():
            exc = HookTimeout(name, self.timeout, subnet=subnet)
            self._emit(HookCall(name, subnet, False, None, duration, "", str(exc)))
            raise exc
        error = box.get("error")
        self._emit(HookCall(name, subnet, error is None, None, duration, "",
                            "" if error is None else f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        return box.get("value")

    def lifecycle(self, method: str) -> Any:
        """pre_startup / post_startup / shutdown."""
        return self._timed(COMMAND_NAMES[method], "", lambda: getattr(self.hook, method)(self.ctx))

    def apply(self, kind: str, leases: Sequence[RemoteLease]) -> dict[str, BaseException | None]:
        """Run subnet_add/subnet_remove for a batch; returns key -> None (ok) or the error."""
        method = getattr(self.hook, f"subnet_{kind}_batch")
        name = COMMAND_NAMES[f"subnet_{kind}"]
        label = leases[0].key if len(leases) == 1 else f"{len(leases)} subnets"
        results: dict[str, BaseException | None] = {lease.key: None for lease in leases}
        try:
            self._timed(name, label, lambda: method(list(leases), self.ctx))
        except BatchError as exc:
            for key, error in exc.failures.items():
                if key in results:
                    results[key] = error
        except Exception as exc:  # noqa: BLE001 - every lease of the batch failed
            for key in results:
                results[key] = exc
        return results
