"""A single-host lease store in SQLite, safe across processes (labs, tests, demos).

`leases` holds the live entries (value = flannel's LeaseAttrs JSON); `events` is an
append-only log so `watch(revision)` replays what happened after a `list()`. History past
`history` events is trimmed; a watcher that fell off it re-lists and diffs (flannel's
LeaseWatcher.Reset). Writes are `BEGIN IMMEDIATE` transactions in WAL mode. Expired rows
are invisible, and any operation or watcher wakeup turns them into 'expire' events in a
write transaction, so every watcher reports REMOVED. Watchers wake on file events from
watchdog's inotify emitter (a commit writes `<db>-wal`; our writers also touch `<db>-notify` after COMMIT),
confirmed with `PRAGMA data_version`, with a 1 s safety poll and a wakeup at the earliest
expiration.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from dataclasses import replace
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from collections.abc import Callable, Iterator

from watchdog.events import FileClosedEvent, FileSystemEvent
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyEmitter

from flannel_ext._config import paths
from flannel_ext._util.errors import LeaseConflict, OutOfSubnets, StoreError
from flannel_ext._stores.allocate import ipv6_subnet_range, out_of_subnets, plan_acquire, subnet_range
from flannel_ext._stores.base import DEFAULT_TTL, AcquireRequest, EventSink, Snapshot, Watch
from flannel_ext._stores.lease import Lease, LeaseAttrs, LeaseEvent, parse_entry, parse_subnet_key

log = logging.getLogger(__name__)

DEFAULT_PATH = paths.STORE_PATH
HISTORY = 10000
SAFETY_POLL = 1.0  # look at data_version this often even without a file event
SETTLE = 0.02      # re-check this soon after a wakeup that showed no commit yet
BUSY_TIMEOUT = 30.0   # SQLite's busy timeout, and how long a writer waits for the writer lock
LOCK_POLL = 0.01      # longest pause between two tries of a taken writer lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (key TEXT PRIMARY KEY, value TEXT NOT NULL,
    expiration REAL, revision INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS leases_expiration ON leases(expiration) WHERE expiration IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (rev INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('put', 'delete', 'expire')), value TEXT, expiration REAL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_SOMEONE = LeaseAttrs(public_ip="")  # stands for "another node's" in _acquire_view


class WriterLockTimeout(StoreError):
    """The writer lock stayed taken past the timeout (its holder stopped or hung); retry later."""


@lru_cache(maxsize=1 << 17)
def _key_subnets(key: str):
    """(v4, v6) of a key, or None if malformed; cached, acquire looks at every key."""
    try:
        v4, v6 = parse_subnet_key(key)
    except ValueError:
        return None
    return v4 if v4.prefixlen else None, v6


def _parse(key: object, value: object, expiration: object) -> Lease | LeaseEvent:
    """A Lease from a stored row, or a REJECTED event saying what is wrong with it.
    Rows are untrusted: any writer of the file can store BLOBs, numbers or bad UTF-8."""
    try:
        return parse_entry(key, value, expiration)
    except ValueError as exc:
        return LeaseEvent.rejected(key, str(exc))


def _text(data: bytes) -> str | bytes:
    """sqlite3 text_factory: TEXT that is not UTF-8 stays bytes (then rejected as a lease)
    instead of failing the whole SELECT with OperationalError."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


class SqliteStore:
    """The LeaseStore protocol over one SQLite file. See the module docstring."""

    def __init__(self, path: str | os.PathLike = DEFAULT_PATH, *,
                 ttl_clock: Callable[[], float] = time.time, history: int = HISTORY,
                 lock_timeout: float = BUSY_TIMEOUT):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.clock = ttl_clock
        self.history = history
        self._notify_path = Path(f"{self.path}-notify")
        self._lock_path = Path(f"{self.path}-lock")
        self._lock = threading.Lock()
        # The last few list() results by revision: a watch from that revision diffs
        # against exactly what the caller saw if history is already gone.
        self._snapshots: dict[int, dict[str, Lease]] = {}
        with self._errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()

    @classmethod
    def from_url(cls, url: str, **options) -> SqliteStore:
        """`sqlite:PATH` (an empty PATH means the default)."""
        rest = url.split(":", 1)[1]
        rest = rest[2:] if rest.startswith("//") else rest  # sqlite:///abs/path works too
        return cls(rest or DEFAULT_PATH, **options)


    @contextmanager
    def _errors(self) -> Iterator[None]:
        """sqlite and file errors become StoreError naming the database."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.lock_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.text_factory = _text
        conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal" and conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('leases', 'events', 'meta')").fetchone()[0] == 3:
            return conn  # set up already: opening needs no writer lock (a stopped writer may hold it)
        with self._writer_turn():
            # Switching to WAL needs the file alone; the flock queues our own openers.
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            with conn:  # sqlite3's context manager: COMMIT, or ROLLBACK on error
                conn.execute("BEGIN IMMEDIATE")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
        return conn

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Queue our writers on flock: SQLite's busy handler sleeps up to 100 ms between
        retries, so 50 contending processes took ~2 s; a blocked flock wakes at once.
        Read-only fd: closing it sends no inotify event to the watchers."""
        fd = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._flock(fd)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _flock(self, fd: int) -> None:
        """flock with a timeout: a writer SIGSTOPped while holding the lock must not hang
        every other node for ever (a blocking flock has no timeout). Non-blocking tries,
        0.5 ms apart at first and at most LOCK_POLL apart: a release is seen within
        milliseconds, and with many waiters one of them retries almost at once."""
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterLockTimeout(
                    f"sqlite store {self.path}: the writer lock {self._lock_path} stayed taken for "
                    f"{self.lock_timeout:g}s (is a process holding it stopped or hung? `fuser "
                    f"{self._lock_path}` shows it); will retry")
            time.sleep(min(pause, left))
            pause = min(pause * 2, LOCK_POLL)

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; wakes watchers after COMMIT if anything changed."""
        with self._errors(), self._writer_turn():
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if conn.total_changes != before:  # open+close: IN_CLOSE_WRITE, strictly after COMMIT
            with suppress(OSError):
                os.close(os.open(self._notify_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))

    @contextmanager
    def _read(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent WAL snapshot for several SELECTs."""
        with self._errors():
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")


    def _event(self, conn, key: str, type_: str, value: str | None, expiration: float | None) -> int:
        rev = conn.execute("INSERT INTO events (key, type, value, expiration) VALUES (?, ?, ?, ?)",
                           (key, type_, value, expiration)).lastrowid
        cut = rev - self.history
        if cut > 0 and conn.execute("DELETE FROM events WHERE rev <= ?", (cut,)).rowcount:
            conn.execute("INSERT INTO meta VALUES ('compacted', ?) ON CONFLICT(name) DO UPDATE "
                         "SET value = max(value, excluded.value)", (cut,))
        return rev

    def _put(self, conn, key: str, value: str, expiration: float | None) -> None:
        rev = self._event(conn, key, "put", value, expiration)
        conn.execute("INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                      "value = excluded.value, expiration = excluded.expiration, "
                      "revision = excluded.revision", (key, value, expiration, rev))

    def _delete(self, conn, key: object, type_: str = "delete", column: str = "key") -> bool:
        row = conn.execute(f"DELETE FROM leases WHERE {column} = ? RETURNING key, value, expiration",
                           (key,)).fetchone()
        if row:
            self._event(conn, row[0], type_, row[1], row[2])
        return row is not None

    def _sweep_in(self, conn, now: float) -> int:
        # By rowid: a key that does not read back as it was written (bad UTF-8) still goes.
        rows = conn.execute("SELECT rowid FROM leases WHERE expiration <= ? ORDER BY expiration",
                            (now,)).fetchall()
        return sum(self._delete(conn, rowid, "expire", "rowid") for (rowid,) in rows)

    def _sweep(self, conn) -> bool:
        """Expire due rows; a cheap read first so a quiet store never takes the write lock."""
        now = self.clock()
        if conn.execute("SELECT 1 FROM leases WHERE expiration <= ? LIMIT 1", (now,)).fetchone():
            with self._write(conn):
                return self._sweep_in(conn, now) > 0
        return False

    def _rows(self, conn) -> tuple[list[Lease], list[LeaseEvent]]:
        leases: list[Lease] = []
        rejected: list[LeaseEvent] = []
        for key, value, exp in conn.execute("SELECT key, value, expiration FROM leases WHERE "
                                            "expiration IS NULL OR expiration > ? ORDER BY key",
                                            (self.clock(),)):
            item = _parse(key, value, exp)
            if isinstance(item, LeaseEvent):
                rejected.append(item)
            else:
                leases.append(item)
        return leases, rejected

    def _acquire_view(self, conn, public_ip: str) -> list[Lease]:
        """The leases as plan_acquire needs them, in O(rows) cheap steps: only a value that
        contains our IP can be ours and is parsed; the rest (garbage values included) just
        occupy their subnet. Full parsing made acquire ~50 us per existing lease."""
        leases = []
        for key, value, exp in conn.execute("SELECT key, value, expiration FROM leases WHERE "
                                            "expiration IS NULL OR expiration > ?", (self.clock(),)):
            if isinstance(value, str) and public_ip in value and isinstance(item := _parse(key, value, exp), Lease):
                leases.append(item)
            elif (subnets := _key_subnets(key)) is not None:
                leases.append(Lease(subnets[0], _SOMEONE, subnets[1], exp))
        return leases

    @staticmethod
    def _heads(conn) -> tuple[int, int]:
        """(current revision, highest trimmed revision); AUTOINCREMENT never reuses a rev."""
        return conn.execute("SELECT (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE "
                            "name = 'events'), (SELECT coalesce(max(value), 0) FROM meta WHERE "
                            "name = 'compacted')").fetchone()

    def _expiry(self, ttl: float | None) -> float | None:
        return self.clock() + ttl if ttl else None  # no TTL: a reservation, as in flannel


    def network_config(self) -> str | None:
        return None

    def acquire(self, request: AcquireRequest) -> Lease:
        conn = self._conn
        with self._lock, self._write(conn):
            self._sweep_in(conn, self.clock())
            plan = plan_acquire(request, self._acquire_view(conn, request.attrs.public_ip))
            for lease in plan.delete:
                self._delete(conn, lease.key)
            if plan.reuse is not None:
                # flannel keeps a reservation (no expiry) a reservation.
                exp = None if plan.reuse.expiration is None else self._expiry(request.ttl)
                lease = Lease(plan.reuse.subnet, request.attrs, plan.reuse.ipv6_subnet, exp)
            elif out_of_subnets(plan, request.config):
                v6 = bool(plan.candidates) or not request.config.enable_ipv4
                first, last, length = (ipv6_subnet_range if v6 else subnet_range)(request.config)
                raise OutOfSubnets(f"out of subnets: no free /{length} between {first} and "
                                   f"{last} in {self.path}")
            else:
                lease = Lease(plan.candidates[0] if plan.candidates else None, request.attrs,
                              plan.ipv6_candidates[0] if plan.ipv6_candidates else None,
                              self._expiry(request.ttl))
            self._put(conn, lease.key, request.attrs.to_json(), lease.expiration)
        return lease

    def renew(self, lease: Lease, ttl: float = DEFAULT_TTL) -> Lease:
        conn = self._conn
        with self._lock, self._write(conn):
            self._sweep_in(conn, self.clock())
            row = conn.execute("SELECT value FROM leases WHERE key = ?", (lease.key,)).fetchone()
            if row:
                item = _parse(lease.key, row[0], None)
                if isinstance(item, LeaseEvent) or item.attrs.public_ip != lease.attrs.public_ip:
                    raise LeaseConflict(f"lease {lease.key} in {self.path} now belongs to "
                                        f"another node; acquire a new one")
            # Like flannel's Grant + Put: an expired lease that nobody took is re-created.
            renewed = replace(lease, expiration=self._expiry(ttl))
            self._put(conn, lease.key, lease.attrs.to_json(), renewed.expiration)
        return renewed

    def release(self, lease: Lease) -> None:
        self.delete_key(lease.key)

    def list(self) -> Snapshot:
        conn = self._conn
        with self._lock:
            try:
                self._sweep(conn)
            except WriterLockTimeout:
                pass  # expired rows are invisible anyway; the next list or watch sweeps them
            with self._read(conn):
                leases, rejected = self._rows(conn)
                revision = self._heads(conn)[0]
            self._snapshots[revision] = {lease.key: lease for lease in leases}
            while len(self._snapshots) > 4:
                del self._snapshots[min(self._snapshots)]
        return Snapshot(leases, revision, rejected)

    def watch(self, revision: int, sink: EventSink) -> Watch:
        with self._lock:
            known = self._snapshots.get(revision)
        watcher = _Watcher(self, revision, None if known is None else dict(known))
        return Watch(f"sqlite-watch {self.path.name}", watcher.run, sink).start()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


    def put_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Write a lease as is (another node's, a reservation...); `ttl` overrides its expiry."""
        stored = replace(lease, expiration=self._expiry(ttl) if ttl else lease.expiration)
        self.put_raw(stored.key, stored.attrs.to_json(), expiration=stored.expiration)
        return stored

    def put_raw(self, key: str, value_text: str, *, expiration: float | None = None) -> None:
        """Write any text under any key (e.g. garbage, to test rejection)."""
        with self._lock, self._write(self._conn):
            self._put(self._conn, key, value_text, expiration)

    def delete_key(self, key: str) -> bool:
        """Delete one entry; True if it existed. Watchers see REMOVED."""
        with self._lock, self._write(self._conn):
            self._sweep_in(self._conn, self.clock())
            return self._delete(self._conn, key)


class _DbChanges:
    """Stands in for watchdog's event queue: a file event about the database (`<db>`,
    `-wal`, `-notify`, ...) sets `wake`, straight from the emitter's thread (no observer
    thread and queue in between: one thread hop less on every commit)."""

    def __init__(self, name: str, wake: threading.Event):
        self.name, self.wake = name, wake

    def put(self, item: tuple[FileSystemEvent, ObservedWatch], block: bool = True,
            timeout: float | None = None) -> None:
        if os.path.basename(os.fsdecode(item[0].src_path)).startswith(self.name):
            self.wake.set()


NEXT_EXPIRY = "SELECT expiration FROM leases WHERE expiration IS NOT NULL ORDER BY expiration LIMIT 1"


def _next_expiry(conn: sqlite3.Connection) -> float | None:
    """The earliest numeric expiration, by the partial index: one step per wake at any
    N (a typeof() filter scanned every lease). Numbers sort before text and BLOBs, so a
    hand-written "tomorrow" first means there is no numeric one."""
    row = conn.execute(NEXT_EXPIRY).fetchone()
    return row[0] if row and isinstance(row[0], (int, float)) else None


class _Watcher:
    """One watch: its own connection and file observer, and the leases it has reported."""

    def __init__(self, store: SqliteStore, revision: int, known: dict[str, Lease] | None):
        self.store, self.rev, self.known = store, revision, known
        self.bad: dict[str, str] = {}  # rejected key -> reason, as reported

    def run(self, watch: Watch) -> None:
        store, wake = self.store, threading.Event()
        watch.on_close(wake.set)
        with store._errors():
            conn = store._connect()
        emitter: InotifyEmitter | None = None
        try:
            # Only IN_CLOSE_WRITE: every writer closes `-notify` after its COMMIT. Without the
            # filter each commit's WAL writes, lock-file opens and reads reached every node's
            # watcher as a dozen Python events (a 100-node lab: ~1 ms per commit per node).
            emitter = InotifyEmitter(_DbChanges(store.path.name, wake),   # type: ignore[arg-type]
                                     ObservedWatch(str(store.path.parent), recursive=False),
                                     event_filter=[FileClosedEvent])
            emitter.start()
        except OSError as exc:   # inotify limits reached: the safety poll still sees every commit
            log.warning("sqlite store %s: no file events (%s); looking every %gs", store.path, exc, SAFETY_POLL)
            emitter = None
        try:
            with store._errors():
                self._loop(conn, wake, watch)
        finally:
            if emitter is not None:
                emitter.stop()
                emitter.join(2)
            conn.close()

    def _loop(self, conn: sqlite3.Connection, wake: threading.Event, watch: Watch) -> None:
        store, last_version, settle = self.store, None, False
        while not watch.closing.is_set():
            try:
                swept = store._sweep(conn)
            except WriterLockTimeout as exc:  # keep watching; sweep when the lock is back
                log.warning("%s", exc)
                swept = False
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if swept or version != last_version or self.known is None:
                last_version = version
                watch.deliver(self._step(conn))
            timeout = SETTLE if settle else SAFETY_POLL
            nxt = _next_expiry(conn)
            if nxt is not None:
                timeout = min(timeout, max(0.0, nxt - store.clock()) + 0.001)
            woke = wake.wait(timeout)
            wake.clear()
            # A WAL write can wake us before its commit is visible: look again soon.
            settle = woke and conn.execute("PRAGMA data_version").fetchone()[0] == last_version

    def _step(self, conn) -> list[LeaseEvent]:
        with self.store._read(conn):
            head, compacted = SqliteStore._heads(conn)
            if self.rev >= head and self.known is not None:
                return []
            if self.rev < compacted or (self.known is None and self.rev > head):
                return self._reset(conn, head)
            rows = conn.execute("SELECT rev, key, type, value, expiration FROM events "
                                "WHERE rev > ? ORDER BY rev", (self.rev,)).fetchall()
            if self.known is None:
                current, _ = self.store._rows(conn)
        batch = [event for row in rows for event in self._apply(*row[1:])]
        if self.known is None:
            # State after these events is the current state: track that from now on.
            self.known = {lease.key: lease for lease in current}
        self.rev = head
        return batch

    def _apply(self, key, type_, value, expiration) -> list[LeaseEvent]:
        known = self.known if self.known is not None else {}
        if type_ == "put":
            item = _parse(key, value, expiration)
            if isinstance(item, LeaseEvent):
                self.bad[key] = item.reason
                return [item]  # the old lease (if any) stays: garbage never removes a lease
            self.bad.pop(key, None)
            known[key] = item
            return [LeaseEvent.added(item)]
        self.bad.pop(key, None)
        lease = known.pop(key, None)
        if lease is None:
            item = _parse(key, value or "", expiration)
            if isinstance(item, LeaseEvent):
                return []  # an entry nobody was told about (garbage) went away
            lease = item
        return [LeaseEvent.removed(lease)]

    def _reset(self, conn, head: int) -> list[LeaseEvent]:
        """History is gone: diff the current state against what we reported (Reset)."""
        current, rejected = self.store._rows(conn)
        now = {lease.key: lease for lease in current}
        bad = {event.key for event in rejected}
        old = self.known or {}
        batch = [LeaseEvent.removed(lease) for key, lease in old.items()
                 if key not in now and key not in bad]
        batch += [LeaseEvent.added(lease) for key, lease in now.items()
                  if old.get(key) is None or old[key].attrs != lease.attrs]
        batch += [event for event in rejected if self.bad.get(event.key) != event.reason]
        self.bad = {event.key: event.reason for event in rejected}
        self.known = {**{k: v for k, v in old.items() if k in bad}, **now}
        self.rev = head
        return batch
