"""A store opened for reading only: `leases`, `doctor` and `run --dry-run` write nothing.

The etcd and kube stores only write when asked to, so they are wrapped to refuse every
write. The SQLite store creates its file and schema when opened; here the database is
read through SQLite's read-only modes instead, and a missing file is an empty store.
"""
from __future__ import annotations

import builtins
import os
import sqlite3
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from flannel_ext._config import paths
from flannel_ext._util.errors import StoreError
from flannel_ext._stores import open_store
from flannel_ext._stores.base import DEFAULT_TTL, AcquireRequest, EventSink, Snapshot, Watch
from flannel_ext._stores.lease import Lease, LeaseEvent
from flannel_ext._stores.sqlite import _parse


class SqliteReader:
    """The live rows of a SqliteStore's database, read without creating or changing a file."""

    def __init__(self, path: str | os.PathLike, *, missing_ok: bool = True):
        self.path, self.missing_ok = Path(path), missing_ok

    def _connect(self) -> sqlite3.Connection:
        # With a -wal file present a writer may be mid-flight: read through WAL (the
        # -shm/-wal files exist already). Without one the main file is complete, and
        # `immutable` reads it without creating -shm/-wal next to it.
        mode = "mode=ro" if Path(f"{self.path}-wal").exists() else "immutable=1"
        return sqlite3.connect(f"{self.path.absolute().as_uri()}?{mode}", uri=True)

    def list(self) -> Snapshot:
        if not self.path.exists():
            if self.missing_ok:          # a store not created yet holds no leases
                return Snapshot([], 0, [])
            raise StoreError(f"sqlite store {self.path}: no such file; check the path given to --store")
        try:
            conn = self._connect()
            try:
                rows = conn.execute("SELECT key, value, expiration FROM leases WHERE expiration IS NULL "
                                    "OR expiration > ? ORDER BY key", (time.time(),)).fetchall()
                revision = conn.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence "
                                        "WHERE name = 'events'").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from None
        items = [_parse(*row) for row in rows]
        return Snapshot([i for i in items if isinstance(i, Lease)], int(revision),
                        [i for i in items if isinstance(i, LeaseEvent)])

    def network_config(self) -> str | None:
        return None

    def watch(self, revision: int, stop: threading.Event) -> Iterator[builtins.list[LeaseEvent]]:
        raise StoreError(f"sqlite store {self.path}: opened read-only, cannot watch")

    def close(self) -> None:
        pass


class ReadOnlyStore:
    """Any store, with acquire/renew/release refused (a dry run that tried would be a bug)."""

    def __init__(self, store: Any, url: str):
        self.store, self.url = store, url

    def _refuse(self, what: str) -> StoreError:
        return StoreError(f"{self.url}: opened read-only, refusing to {what}")

    def acquire(self, request: AcquireRequest) -> Lease:
        raise self._refuse("acquire a lease")

    def renew(self, lease: Lease, ttl: float = DEFAULT_TTL) -> Lease:
        raise self._refuse(f"renew {lease.key}")

    def release(self, lease: Lease) -> None:
        raise self._refuse(f"release {lease.key}")

    def list(self) -> Snapshot:
        return self.store.list()

    def network_config(self) -> str | None:
        return self.store.network_config()

    def watch(self, revision: int, sink: EventSink) -> Watch:
        return self.store.watch(revision, sink)

    def close(self) -> None:
        self.store.close()


def open_read_only(url: str, *, missing_ok: bool = True, **options: Any) -> ReadOnlyStore:
    """`open_store(url)` for reading: nothing is created or written in any store. A
    missing SQLite file is an empty store, or with `missing_ok=False` a StoreError."""
    value = (url or "").strip()
    if value.startswith("sqlite:"):
        rest = value.split(":", 1)[1]
        rest = rest[2:] if rest.startswith("//") else rest
        return ReadOnlyStore(SqliteReader(rest or paths.STORE_PATH, missing_ok=missing_ok), value)
    return ReadOnlyStore(open_store(value, **options), value)
