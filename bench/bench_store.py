"""Benchmark the sqlite lease store: watch latency across processes, concurrent allocation.

    python3 bench/bench_store.py [--events 200] [--allocators 50] [--baseline-rev REV]

(a) Latency from "a writer starts a lease write" to "a watcher in another process has the
    event", p50/p99, for SqliteStore.watch (file events from watchdog) against baselines
    measured in the same run on the same machine: the same watch of `--baseline-rev` (the
    hand-written ctypes inotify wrapper watchdog replaced; run from a `git archive` of
    that commit), a `PRAGMA data_version` poll every 100 ms and a fixed 1 s poll.
    Timestamps are CLOCK_MONOTONIC, which is shared by all processes.
(b) N processes acquiring at the same moment: total wall time, per-acquire p50/p99, and
    the number of duplicate subnets (must be 0).
"""
from __future__ import annotations

import argparse
import ipaddress
import multiprocessing
import random
import sqlite3
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flannel_ext._config.netconf import NetConf  # noqa: E402
from flannel_ext._stores.base import AcquireRequest  # noqa: E402
from flannel_ext._stores.lease import EventType, Lease, LeaseAttrs  # noqa: E402
from flannel_ext._stores.sqlite import SqliteStore  # noqa: E402
from _common import pct  # noqa: E402

MP = multiprocessing.get_context("fork")
ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "e949b3a"   # main just before watchdog replaced the ctypes inotify wrapper
# The watch of the baseline revision: its generator API, run with PYTHONPATH at that tree.
_OLD_WATCHER = """
import sys, threading, time
from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext._stores.lease import EventType
store, stop = SqliteStore(sys.argv[1]), threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", flush=True)
for batch in store.watch(store.list().revision, stop):
    now = time.monotonic()
    for event in batch:
        if event.type is EventType.ADDED:
            print(event.key, now, flush=True)
"""


class _QueueSink:
    def __init__(self, out):
        self.out = out

    def deliver(self, batch):
        now = time.monotonic()
        for event in batch:
            if event.type is EventType.ADDED:
                self.out.put((event.key, now))

    def failed(self, error):
        print(f"watch failed: {error!r}", file=sys.stderr)
CONF = NetConf(network=ipaddress.IPv4Network("10.0.0.0/8"), subnet_len=24)


def _watch_store(path, out, stop, ready):
    store = SqliteStore(path)
    watch = store.watch(store.list().revision, _QueueSink(out))
    ready.set()
    stop.wait()
    watch.close()


def _watch_old_store(path, tree, out, stop, ready):
    """The baseline revision's watch in a child process; its lines relayed to `out`."""
    proc = subprocess.Popen([sys.executable, "-c", _OLD_WATCHER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=tree), cwd=tree)
    assert proc.stdout is not None and proc.stdin is not None
    threading.Thread(target=lambda: (stop.wait(), proc.stdin.close()), daemon=True).start()
    for line in proc.stdout:
        if line.strip() == "ready":
            ready.set()
            continue
        key, when = line.split()
        out.put((key, float(when)))
    proc.wait()


def baseline_tree(rev: str, into: Path) -> str:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "flannel_ext"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into)


def _watch_poll(path, interval, out, stop, ready):
    """Baseline: poll data_version every `interval`, read new events when it changes."""
    conn = sqlite3.connect(path, isolation_level=None)
    rev = conn.execute("SELECT coalesce(max(rev), 0) FROM events").fetchone()[0]
    version = None
    ready.set()
    while not stop.is_set():
        current = conn.execute("PRAGMA data_version").fetchone()[0]
        if current != version:
            version = current
            rows = conn.execute("SELECT rev, key FROM events WHERE rev > ? AND type = 'put'",
                                (rev,)).fetchall()
            now = time.monotonic()
            for row_rev, key in rows:
                out.put((key, now))
                rev = max(rev, row_rev)
        time.sleep(interval)


def measure_latency(target, extra, events: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leases.db"
        store = SqliteStore(path)
        out, stop, ready = MP.Queue(), MP.Event(), MP.Event()
        proc = MP.Process(target=target, args=(path, *extra, out, stop, ready))
        proc.start()
        ready.wait(10)
        time.sleep(0.2)
        sent, seen = {}, {}
        rng = random.Random(1)
        for i in range(events):
            lease = Lease(ipaddress.IPv4Network((0x0A000000 + ((i + 1) << 8), 24)),
                          LeaseAttrs.with_string_data(f"192.168.{i // 250}.{i % 250 + 1}", "bench"))
            sent[lease.key] = time.monotonic()
            store.put_lease(lease, ttl=3600)
            time.sleep(rng.uniform(0.005, 0.025))  # unsynchronised with any poll period
        deadline = time.monotonic() + 5
        while len(seen) < events and time.monotonic() < deadline:
            try:
                key, when = out.get(timeout=1)
            except Exception:
                continue
            seen.setdefault(key, when)
        stop.set()
        proc.join(5)
        store.close()
    missing = events - len(seen)
    if missing:
        print(f"warning: {missing} events never seen", file=sys.stderr)
    return [(seen[k] - sent[k]) * 1000 for k in seen]


def _allocate(path, index, start, out):
    store = SqliteStore(path)
    request = AcquireRequest(LeaseAttrs.with_string_data(f"192.168.{index // 250}.{index % 250 + 1}",
                                                         "bench"), CONF)
    start.wait(30)
    t0 = time.monotonic()
    lease = store.acquire(request)
    out.put((lease.key, t0, time.monotonic()))


def measure_allocation(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leases.db"
        SqliteStore(path).close()
        start, out = MP.Event(), MP.Queue()
        procs = [MP.Process(target=_allocate, args=(path, i, start, out)) for i in range(n)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # let every child open its store and block on `start`
        t0 = time.monotonic()
        start.set()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
    per = [(end - begin) * 1000 for _, begin, end in results]
    return {"wall_ms": (max(end for *_, end in results) - t0) * 1000,
            "p50": pct(per, 50), "p99": pct(per, 99),
            "dups": n - len({key for key, *_ in results})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--allocators", type=int, default=50)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tree:
        runs = [("SqliteStore.watch (watchdog)", _watch_store, ()),
                (f"baseline: SqliteStore.watch at {args.baseline_rev} (ctypes inotify)", _watch_old_store,
                 (baseline_tree(args.baseline_rev, Path(tree)),)),
                ("baseline: data_version poll 100 ms", _watch_poll, (0.1,)),
                ("baseline: fixed poll 1 s", _watch_poll, (1.0,))]
        results = [(name, measure_latency(target, extra, args.events)) for name, target, extra in runs]
    ref50, ref99 = pct(results[0][1], 50), pct(results[0][1], 99)
    print(f"\n### (a) lease write -> watcher in another process ({args.events} events)\n")
    print("| watcher | seen | p50 ms | p99 ms | max ms | p50 / store | p99 / store |")
    print("|---|---|---|---|---|---|---|")
    for name, lat in results:
        p50, p99 = pct(lat, 50), pct(lat, 99)
        print(f"| {name} | {len(lat)} | {p50:.1f} | {p99:.1f} | {max(lat):.1f} | "
              f"{p50 / ref50:.1f}x | {p99 / ref99:.1f}x |")

    rounds = [measure_allocation(args.allocators) for _ in range(3)]
    print(f"\n### (b) {args.allocators} processes acquire at once (3 rounds, fresh DB each)\n")
    print("| round | total wall ms | per-acquire p50 ms | per-acquire p99 ms | duplicates |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        print(f"| {i} | {r['wall_ms']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['dups']} |")
    print(f"\n(median wall {statistics.median(r['wall_ms'] for r in rounds):.0f} ms; "
          f"{threading.active_count()} thread(s); python {sys.version.split()[0]}, "
          f"sqlite {sqlite3.sqlite_version})")
    return 1 if any(r["dups"] for r in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
