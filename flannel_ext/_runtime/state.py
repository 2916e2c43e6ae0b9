"""What this node may have programmed, kept write-ahead so a restart can reconcile.

Two files in the state dir:
  * ``programmed.json``: a snapshot (written atomically) of every lease that may be in
    the kernel, with the identity of that kernel (netns, boot, Network);
  * ``journal.log``: one JSON line per hook call since the snapshot: ``intend`` before the
    dispatcher runs a hook, ``done`` after it returns.

The record is "what may be in the kernel", not "what succeeded": an add is recorded
before it runs, so a kill -9 during (or just after) it still leaves a record, and only a
remove that succeeded drops an entry. On restart the runtime removes every recorded lease
the store no longer wants and adds again every one it does (flannel#2554), so a recipe's
remove must tolerate an absent entry (Documentation/reliability.md).

Each record is one write() to an O_APPEND file: once it returns, the record survives the
death of the process (kill -9), which is the failure we guard against. It is not fsync'd:
after a power loss nothing in the kernel survived either, and the boot id in the snapshot
makes the next start begin fresh. A write that fails (ENOSPC, EROFS, EIO) puts the journal
in a degraded mode: it is reported (NodeStats.state_write_error, /readyz, one log line),
programming goes on, and a full snapshot is retried with backoff until one succeeds.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from flannel_ext._util.files import write_atomic
from flannel_ext._hooks.base import RemoteLease
from flannel_ext._runtime.stats import NodeStats
from flannel_ext._runtime.statedir import KernelIdentity

log = logging.getLogger("flannel_ext.state")

SNAPSHOT = "programmed.json"
JOURNAL = "journal.log"
RETRY_INITIAL, RETRY_CAP = 0.5, 30.0


def _encode(lease: RemoteLease) -> dict:
    return {
        "subnet": str(lease.subnet) if lease.subnet else None,
        "ipv6_subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
        "public_ip": lease.public_ip, "public_ipv6": lease.public_ipv6,
        "backend_type": lease.backend_type, "backend_data": lease.backend_data,
        "backend_data_raw": lease.backend_data_raw,
    }


def _decode(key: str, item: dict) -> RemoteLease:
    return RemoteLease(
        subnet=ipaddress.IPv4Network(item["subnet"]) if item.get("subnet") else None,
        ipv6_subnet=ipaddress.IPv6Network(item["ipv6_subnet"]) if item.get("ipv6_subnet") else None,
        public_ip=item["public_ip"], public_ipv6=item.get("public_ipv6"),
        backend_type=item.get("backend_type", "extension"), backend_data=item.get("backend_data", ""),
        backend_data_raw=item.get("backend_data_raw"), key=key)


def _describe(exc: OSError) -> str:
    """e.g. "No space left on device (ENOSPC)"."""
    if not exc.errno:
        return str(exc)
    return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"


class StateJournal:
    """The write-ahead record of one state dir. Thread-safe; never raises on a write error."""

    def __init__(self, state_dir: str, identity: KernelIdentity, *, stats: NodeStats | None = None,
                 enabled: bool = True, compact_every: int = 512,
                 clock: Callable[[], float] = time.monotonic):
        self.state_dir, self.identity, self.stats = state_dir, identity, stats
        self.enabled, self.compact_every, self.clock = enabled, compact_every, clock
        self.own = ""
        self.entries: dict[str, RemoteLease] = {}   # key -> lease that may be in the kernel
        self.error = ""                             # why the last write failed ("" = fine)
        self._pending: dict[str, str] = {}          # key -> kind of the call in flight
        self._records = 0
        self._failures = 0
        self._retry_at = 0.0
        self._fd: int | None = None
        self._recovered = False     # never overwrite a previous run's record before reading it
        self._lock = threading.Lock()

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.state_dir, SNAPSHOT)

    @property
    def journal_path(self) -> str:
        return os.path.join(self.state_dir, JOURNAL)

    # --- restart ------------------------------------------------------------------
    def recover(self) -> dict[str, RemoteLease]:
        """The leases a previous run may have left in this kernel; then a fresh snapshot."""
        with self._lock:
            doc = self._read_snapshot()
            why = self.identity.mismatch(doc) if doc else None
            if why:
                self._discard(doc, why)
            else:
                self.entries = {key: _decode(key, item) for key, item in doc.get("programmed", {}).items()}
                in_flight = self._replay()
                if in_flight:
                    log.warning("%d hook call(s) were in flight when the last run stopped (%s); "
                                "treating them as possibly applied", len(in_flight),
                                ", ".join(sorted(in_flight)[:5]) + (" …" if len(in_flight) > 5 else ""))
            self._recovered = True
            if self.enabled:
                self._compact()
            return dict(self.entries)

    def _read_snapshot(self) -> dict:
        try:
            with open(self.snapshot_path, encoding="utf-8") as handle:
                doc = json.load(handle)
            for key, item in doc.get("programmed", {}).items():
                _decode(key, item)  # fail here, not half-way through
            return doc
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable state file %s: %s", self.snapshot_path, exc)
            return {}

    def _discard(self, doc: dict, why: str) -> None:
        count = len(doc.get("programmed", {}))
        if why == "network":
            log.warning("state file %s was written for Network %s, not %s: discarding its %d "
                        "entries (they are not removed from the kernel)", self.snapshot_path,
                        doc.get("network"), self.identity.network, count)
        else:
            what = "before a reboot" if why == "reboot" else "in another network namespace"
            log.warning("state file %s was written %s: nothing it records is in this kernel; "
                        "starting fresh, every lease is added again", self.snapshot_path, what)
        self.entries = {}

    def _replay(self) -> set[str]:
        """Apply journal.log to the snapshot's entries; returns keys whose call never finished.
        Replaying records the snapshot already holds changes nothing (set/delete per key)."""
        pending: set[str] = set()
        try:
            with open(self.journal_path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return pending
        except OSError as exc:
            log.warning("ignoring unreadable journal %s: %s", self.journal_path, exc)
            return pending
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if record["op"] == "intend":
                    for key, item in record["leases"].items():
                        self.entries[key] = _decode(key, item)
                        pending.add(key)
                elif record["op"] == "done":
                    for key in record["ok"] + record["failed"]:
                        pending.discard(key)
                    if record["kind"] == "remove":
                        for key in record["ok"]:
                            self.entries.pop(key, None)
            except (ValueError, KeyError, TypeError, AttributeError):
                # A torn last line: an intend torn before its hook ran, or a done torn
                # after (its entry stays, which is the safe side).
                log.info("skipping unreadable line %d of %s", number, self.journal_path)
        return pending

    # --- the dispatcher's hook-in points -----------------------------------------
    def intend(self, kind: str, leases: Sequence[RemoteLease]) -> None:
        """Before a hook call: from now on these leases may be in the kernel."""
        with self._lock:
            for lease in leases:
                self._pending[lease.key] = kind
                self.entries[lease.key] = lease
            self._append({"op": "intend", "kind": kind,
                          "leases": {lease.key: _encode(lease) for lease in leases}})

    def done(self, kind: str, results: Mapping[str, BaseException | None]) -> None:
        """After a hook call: a removed lease is gone; anything else may still be there."""
        ok = sorted(key for key, error in results.items() if error is None)
        with self._lock:
            for key in results:
                self._pending.pop(key, None)
            if kind == "remove":
                for key in ok:
                    self.entries.pop(key, None)
            self._append({"op": "done", "kind": kind, "ok": ok,
                          "failed": sorted(key for key, error in results.items() if error is not None)})

    def forget(self) -> None:
        """After a hook reload the new dataplane starts empty."""
        with self._lock:
            self.entries.clear()
            self._pending.clear()
            if self.enabled:
                self._compact()

    @property
    def retry_at(self) -> float | None:
        """When `maintain()` next has work (a failed write's retry), on `clock`; None if never."""
        with self._lock:
            return self._retry_at if self.error else None

    def maintain(self) -> None:
        """Called periodically: retries a failed write when its backoff is due."""
        with self._lock:
            if self.error:
                self._retry_if_due()

    def checkpoint(self) -> None:
        """A good moment for a snapshot (nothing in flight): compact a long journal."""
        with self._lock:
            if self.enabled and not self.error and self._due():
                self._compact()

    def close(self) -> None:
        """Clean shutdown: one final snapshot, an empty journal."""
        with self._lock:
            if self.enabled and self._recovered:
                self._compact()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # --- writing ------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.error:  # degraded: the snapshot retry will carry this change
            self._retry_if_due()
            return
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o644)
            if os.write(self._fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a short write means the disk is full
        except OSError as exc:
            self._failed(exc)
            return
        self._records += 1
        if self._due():
            self._compact()

    def _due(self) -> bool:
        """Compact once the journal outgrows the table: a snapshot is O(N), so at most one per
        ~2N records keeps the cost per event O(1) amortised at any N."""
        return self._records >= max(self.compact_every, 2 * len(self.entries))

    def _compact(self) -> None:
        doc = {"version": 2, "own": self.own, **self.identity.to_json(),
               "programmed": {key: _encode(lease) for key, lease in sorted(self.entries.items())}}
        try:
            write_atomic(self.snapshot_path, json.dumps(doc, indent=1) + "\n")
            if self._fd is None:
                self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o644)
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            self._failed(exc)
            return
        self._records = 0
        if self.error:
            log.warning("state writes to %s work again", self.state_dir)
            self.error, self._failures = "", 0
            if self.stats is not None:
                self.stats.state_write_error = ""

    def _failed(self, exc: OSError) -> None:
        first = not self.error
        self._failures += 1
        self.error = f"cannot write state in {self.state_dir}: {_describe(exc)}"
        self._retry_at = self.clock() + min(RETRY_CAP, RETRY_INITIAL * 2 ** (self._failures - 1))
        if self.stats is not None:
            self.stats.state_write_error = self.error
        if first:  # one line per outage; the recovery gets its own
            log.error("%s; retrying with backoff. Leases are still programmed, but a crash "
                      "before the state is written again may leave stale entries", self.error)

    def _retry_if_due(self) -> None:
        if self.clock() >= self._retry_at:
            self._compact()
