"""The dispatcher: drives each remote subnet from what is programmed to what is desired.

Level-triggered, per subnet: a slot holds the lease we want (`desired`) and the lease the
kernel has (`programmed`). The next step is Remove(programmed) when they differ (so a
changed lease gets Remove with its *old* data, then Add with the new), or Add(desired).
This gives the runtime's promises without special cases:
  * one call in flight per subnet, so events for a subnet are never reordered;
  * a failure only delays that subnet (capped exponential backoff), never the others;
  * a Remove that arrives while an Add retry waits simply makes the slot idle;
  * a Remove that gives up forgets the old data, so the Add of newer data still runs;
  * many ready subnets go to the hook as one batch.
The dispatcher thread never dies silently: an unexpected error is logged once, files a
"dispatcher" problem in `NodeStats` (so /readyz is 503 with the reason) and the loop
carries on after a pause; the problem clears once a pass succeeds.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable

from flannel_ext._util.errors import HookError, TemporaryError
from flannel_ext._config.netconf import COMMAND_FIELDS
from flannel_ext._hooks.base import RemoteLease
from flannel_ext._runtime.calls import HookCaller
from flannel_ext._runtime.state import StateJournal
from flannel_ext._runtime.stats import NodeStats

log = logging.getLogger("flannel_ext.dispatch")


def same_lease(a: RemoteLease | None, b: RemoteLease | None) -> bool:
    """Equal as far as programming is concerned (the parsed `data` is derived)."""
    if a is None or b is None:
        return a is b
    return (a.subnet, a.ipv6_subnet, a.public_ip, a.public_ipv6, a.backend_type, a.backend_data_raw) == \
           (b.subnet, b.ipv6_subnet, b.public_ip, b.public_ipv6, b.backend_type, b.backend_data_raw)


@dataclass
class Backoff:
    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    attempts: int = 10          # tries per change before giving up (0 = forever)

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.initial * self.factor ** max(0, attempt - 1))


@dataclass
class Slot:
    key: str
    desired: RemoteLease | None = None
    programmed: RemoteLease | None = None
    reassert: bool = False      # programmed per a previous run: run Add again anyway
    attempts: int = 0
    not_before: float = 0.0
    in_flight: bool = False
    gave_up: bool = False

    def next_step(self) -> tuple[str, RemoteLease] | None:
        if self.programmed is not None and not same_lease(self.desired, self.programmed):
            return "remove", self.programmed
        if self.desired is not None and (self.programmed is None or self.reassert):
            return "add", self.desired
        return None


PROBLEM = "dispatcher"    # the NodeStats problem filed while the loop is failing
LOOP_PAUSE = (1.0, 30.0)  # pause after an unexpected error, doubling


class Dispatcher:
    def __init__(self, caller: HookCaller, stats: NodeStats, *, backoff: Backoff | None = None,
                 batch_size: int = 1024,
                 on_programmed: Callable[[], None] | None = None,
                 journal: StateJournal | None = None):
        self.caller, self.stats = caller, stats
        self.backoff = backoff or Backoff()
        self.batch_size = batch_size
        # Called after a pass that changed what is programmed (the journal already holds
        # the change); no copy of the table is passed: that would be O(N) per event.
        self.on_programmed = on_programmed
        self.journal = journal          # write-ahead record around every hook call
        self.slots: dict[str, Slot] = {}
        # Keys whose slot may have a step to run: a pass looks only at these, so one event
        # in a 10,000-lease cluster costs what it costs in a 10-lease one.
        self._ready: set[str] = set()
        self._desired_count = 0     # slots with a desired lease, kept so stats need no scan
        self._cond = threading.Condition()
        self._stop = False
        self._paused = False
        self._busy = 0
        self._dirty = False
        self._thread: threading.Thread | None = None
        # Sized for the most any hook declares; `caller.max_concurrent_calls` is the limit.
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="dispatch")

    # --- inputs -------------------------------------------------------------------
    def set_desired(self, key: str, lease: RemoteLease | None) -> None:
        with self._cond:
            slot = self.slots.get(key) or self.slots.setdefault(key, Slot(key))
            if not same_lease(slot.desired, lease):
                self._desired_count += (lease is not None) - (slot.desired is not None)
                slot.desired = lease
                slot.attempts, slot.not_before, slot.gave_up = 0, 0.0, False
            self._ready.add(key)
            self._cond.notify_all()

    def desired_keys(self) -> set[str]:
        """O(N): for a resync only; `desired_count()` is the per-event way."""
        with self._cond:
            return {k for k, s in self.slots.items() if s.desired is not None}

    def desired_count(self) -> int:
        with self._cond:
            return self._desired_count

    def load_programmed(self, programmed: dict[str, RemoteLease], *, reassert: bool = True) -> None:
        """Seed from a previous run's state file (before any event is applied)."""
        with self._cond:
            for key, lease in programmed.items():
                slot = self.slots.setdefault(key, Slot(key))
                slot.programmed, slot.reassert = lease, reassert
                self._ready.add(key)
            self._cond.notify_all()

    def forget_programmed(self) -> None:
        """After a hook reload: the new dataplane starts empty, so every lease is added again."""
        with self._cond:
            for slot in self.slots.values():
                slot.programmed, slot.reassert = None, False
                slot.attempts, slot.not_before, slot.gave_up = 0, 0.0, False
            self._ready.update(self.slots)
            self._dirty = True
            self._cond.notify_all()
        if self.journal is not None:
            self.journal.forget()

    def programmed(self) -> dict[str, RemoteLease]:
        with self._cond:
            return {k: s.programmed for k, s in self.slots.items() if s.programmed is not None}

    # --- control ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop starting new calls and wait for those in flight (used around a reload)."""
        with self._cond:
            self._paused = True
            self._cond.wait_for(lambda: self._busy == 0)

    def resume(self, caller: HookCaller | None = None) -> None:
        with self._cond:
            if caller is not None:
                self.caller = caller
            self._paused = False
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._paused = True
            self._cond.wait_for(lambda: self._busy == 0, timeout)
            self._stop = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._flush()

    def idle(self) -> bool:
        """True when nothing is in flight or ready to run now."""
        with self._cond:
            now = time.monotonic()
            return self._busy == 0 and not any(
                s.next_step() and not s.gave_up and s.not_before <= now for s in self.slots.values())

    # --- the loop -----------------------------------------------------------------
    def _loop(self) -> None:
        pause = LOOP_PAUSE[0]
        while True:
            try:
                if not self._pass():
                    return
            except Exception as exc:  # noqa: BLE001 - reported, never a silent death
                log.error("dispatcher failed (retrying in %.0fs): %s: %s", pause, type(exc).__name__, exc)
                self.stats.set_problem(PROBLEM, f"{type(exc).__name__}: {exc}")
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, pause)
                pause = min(pause * 2, LOOP_PAUSE[1])
                continue
            if PROBLEM in self.stats.problems:
                self.stats.clear_problem(PROBLEM)
                log.info("dispatcher recovered")
            pause = LOOP_PAUSE[0]

    def _pass(self) -> bool:
        """Start what is ready, wait for a change, start what that made ready, then record
        the programmed state; False once stopped. The next batch is started *before* the
        state file is written, so writing it (slow for a big table) overlaps the batch
        instead of leaving the hook idle. The record stays safe with calls in flight: an
        add in flight is not recorded yet (a restart adds it again), a remove in flight
        still is (a restart removes it again)."""
        with self._cond:
            if self._stop:
                return False
            wait = self._dispatch_ready()
            if not self._dirty:
                self._cond.wait(wait)
                self._dispatch_ready()
            flush = self._dirty
        if flush:
            self._flush()
        return True

    def _dispatch_ready(self) -> float | None:
        """Start batches for ready slots; returns how long to sleep (None: until notified).
        Holds the lock."""
        if self._paused:
            return None
        limit = self.caller.max_concurrent_calls
        now = time.monotonic()
        wake: float | None = None
        pending = 0
        ready: dict[str, list[tuple[Slot, RemoteLease]]] = {"remove": [], "add": []}
        seen = len(self._ready)
        for key in list(self._ready):
            slot = self.slots.get(key)
            step = slot.next_step() if slot is not None else None
            if slot is None or step is None or slot.gave_up:
                self._ready.discard(key)
                continue
            if slot.in_flight:
                continue
            if slot.attempts:
                pending += 1
            if slot.not_before > now:
                wake = slot.not_before - now if wake is None else min(wake, slot.not_before - now)
                continue
            kind, lease = step
            if len(ready[kind]) < self.batch_size:
                ready[kind].append((slot, lease))
        if len(self._ready) < seen // 4:
            # A set never shrinks and iterating it walks its whole table: after a join of
            # 10,000 leases an almost empty `_ready` would still cost 10,000 steps a pass.
            self._ready = set(self._ready)
        self.stats.set_retries_pending(pending)
        for kind in ("remove", "add"):   # removes first: an add may reuse what they free
            if ready[kind] and self._busy < limit:
                for slot, _ in ready[kind]:
                    slot.in_flight = True
                self._busy += 1
                self._pool.submit(self._run_batch, kind, [lease for _, lease in ready[kind]])
        return wake

    def _run_batch(self, kind: str, leases: list[RemoteLease]) -> None:
        try:
            if self.journal is not None:
                self.journal.intend(kind, leases)
            results = self.caller.apply(kind, leases)
        except BaseException as exc:  # noqa: BLE001 - never lose the slot's in_flight flag
            results = {lease.key: exc for lease in leases}
        if self.journal is not None:
            self.journal.done(kind, results)
        with self._cond:
            try:
                self._record(kind, leases, results)
            except Exception as exc:  # noqa: BLE001 - reported; the loop must not stall
                log.error("dispatcher failed recording a %s batch: %s: %s", kind, type(exc).__name__, exc)
                self.stats.set_problem(PROBLEM, f"{type(exc).__name__}: {exc}")
            finally:
                self._busy -= 1
                self._dirty = True
                self._cond.notify_all()

    def _record(self, kind: str, leases: list[RemoteLease], results: dict[str, BaseException | None]) -> None:
        now = time.monotonic()
        for lease in leases:
            slot = self.slots.get(lease.key)
            if slot is None:
                continue
            slot.in_flight = False
            self._ready.add(lease.key)
            error = results.get(lease.key)
            if error is None:
                self._succeeded(slot, kind, lease)
            elif kind == "add" and not same_lease(slot.desired, lease):
                # Superseded while in flight (e.g. a peer published its VTEP MAC): the
                # failure was about data nobody wants any more; the new data runs next.
                log.info("add %s failed with superseded data (%s); trying the new data", lease.key, error)
            else:
                self._failed(slot, kind, lease, error, now)
            if slot.desired is None and slot.programmed is None:
                del self.slots[lease.key]
                self._ready.discard(lease.key)

    def _succeeded(self, slot: Slot, kind: str, lease: RemoteLease) -> None:
        slot.programmed = lease if kind == "add" else None
        slot.reassert = False
        slot.attempts, slot.not_before = 0, 0.0

    def _failed(self, slot: Slot, kind: str, lease: RemoteLease, error: BaseException, now: float) -> None:
        slot.attempts += 1
        permanent = isinstance(error, HookError) and not error.temporary
        limit = self.backoff.attempts
        if permanent or (limit and slot.attempts >= limit):
            why = "permanent error" if permanent else f"{slot.attempts} attempts"
            log.error("giving up on %s %s after %s: %s", kind, lease.key, why, error)
            self.stats.record_giveup(COMMAND_FIELDS[f"subnet_{kind}"])
            if kind == "remove":
                # The kernel state of the old data is unknown; forget it rather than retry
                # for ever, and go on to the add of the newer data (if any): a remove that
                # gives up must never strand it.
                slot.programmed, slot.reassert = None, False
                slot.attempts, slot.not_before = 0, 0.0
            else:
                slot.gave_up = True
            return
        delay = error.delay if isinstance(error, TemporaryError) and error.delay else \
            self.backoff.delay(slot.attempts)
        slot.not_before = now + delay
        log.warning("%s %s failed (attempt %d), retrying in %.1fs: %s", kind, lease.key,
                    slot.attempts, delay, error)

    def _flush(self) -> None:
        with self._cond:
            self._dirty = False
        if self.on_programmed:
            try:
                self.on_programmed()
            except BaseException:
                with self._cond:
                    self._dirty = True   # write it again on the next pass
                raise
