#!/usr/bin/env python3
"""Event latency through a running node: lease write → SubnetAdd hook start, before and after.

A `flannel-ext run` daemon runs a SubnetAdd command that only records when it started. We
write leases one by one (each after the previous one's hook started) and measure write →
hook start, p50/p99, for the SQLite and the etcd store. Three rows per store, same run:

* floor: this checkout's bare store watch (write → the watch delivers), the part of the
  latency a daemon cannot remove;
* before: the daemon of `--baseline-rev` (default: the last commit with the old event
  path: a watch generator on a thread feeding a second queue, a main loop polling every
  100 ms), run from a `git archive` of that commit in a temp dir;
* after: the daemon of this checkout.

The daemons run in the root namespace on `lo` (127.0.0.1): their hook only appends to a
file, so they change nothing in the kernel. etcd (Debian's etcd-server) listens on loopback.

    sudo python3 bench/bench_events.py [--events 200] [--repeat 5] [--stores sqlite,etcd] [--baseline-rev REV]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from flannel_ext._stores.etcd import EtcdStore  # noqa: E402
from flannel_ext._stores.etcd_watch import b64  # noqa: E402
from flannel_ext._stores.sqlite import SqliteStore  # noqa: E402
from flannel_ext.testing import EventCollector, wait_for  # noqa: E402
from _common import pct  # noqa: E402
from etcd_server import EtcdServer  # noqa: E402

BASELINE_REV = "e949b3a"   # main just before the one event path
VALUE = '{"PublicIP":"192.168.91.%d","PublicIPv6":null,"BackendType":"extension"}'
PREFIX = "/coreos.com/network"


def subnet(i: int) -> str:
    return f"10.92.{1 + i % 250}.{(i // 250) * 64}"


class Writer:
    """Writes lease i of the run into the store under test."""

    def __init__(self, kind: str, target: str):
        self.kind = kind
        if kind == "sqlite":
            self.sqlite = SqliteStore(target)
        else:
            self.etcd = EtcdStore.from_url(target, prefix=PREFIX)

    def put(self, i: int) -> None:
        key, value = f"{subnet(i)}-26", VALUE % (10 + i % 200)
        if self.kind == "sqlite":
            self.sqlite.put_raw(key, value)
        else:
            self.etcd.gateway.call("/kv/put", {"key": b64(f"{PREFIX}/subnets/{key}"), "value": b64(value)})

    def store(self):
        return self.sqlite if self.kind == "sqlite" else self.etcd

    def close(self) -> None:
        self.store().close()


def bench_floor(kind: str, target: str, events: int) -> list[float]:
    """Write → this checkout's store watch delivers, in this process."""
    writer, reader = Writer(kind, target), Writer(kind, target).store()
    collector = EventCollector()
    watch = reader.watch(reader.list().revision, collector)
    lat = []
    try:
        for i in range(events):
            key = f"{subnet(i)}-26"
            start = time.time()
            writer.put(i)
            collector.wait_for(lambda evs: any(e.key == key for e in evs), 10)
            lat.append(time.time() - start)
            collector.events.clear()
    finally:
        watch.close()
        writer.close()
        reader.close()
    return lat


def bench_daemon(kind: str, target: str, events: int, workdir: Path, pythonpath: str | None) -> list[float]:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "net-conf.json"
    conf.write_text(json.dumps({"Network": "10.92.0.0/16", "SubnetLen": 26, "SubnetMin": "10.92.252.0",
                                "Backend": {"Type": "extension",
                                            "SubnetAddCommand": 'echo "$SUBNET $(date +%s.%N)" >> starts'}}))
    store = f"sqlite:{target}" if kind == "sqlite" else target
    argv = [sys.executable, "-m", "flannel_ext", "run", "--net-conf", str(conf), "--store", store,
            "--iface", "lo", "--public-ip", "127.0.0.1", "--subnet-file", str(workdir / "subnet.env"),
            "--state-dir", str(workdir / "state"), "--node-name", f"bench-{workdir.name}"]
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else dict(os.environ)
    with open(workdir / "daemon.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir))
    starts = workdir / "state" / "starts"
    writer = Writer(kind, target)
    writes: dict[str, float] = {}
    try:
        wait_for(lambda: (workdir / "subnet.env").exists() or proc.poll() is not None, 30)
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}:\n{(workdir / 'daemon.log').read_text()}")
        time.sleep(0.5)   # let the watch settle
        for i in range(events):
            writes[f"{subnet(i)}/26"] = time.time()
            writer.put(i)
            wait_for(lambda: starts.exists() and len(starts.read_text().splitlines()) > i, 10, 0.001)
    finally:
        writer.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    done = dict(line.split() for line in starts.read_text().splitlines())
    return [float(done[s]) - writes[s] for s in writes]


def baseline_tree(rev: str, into: Path) -> str:
    """`git archive` of `rev`'s package into `into`; returns a PYTHONPATH running it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "flannel_ext", "recipes"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    os.replace(into / "recipes", into / "flannel_ext" / "recipes")   # as the package installs it
    return str(into)


def run_store(kind: str, events: int, tmp: Path, old_path: str, repeat: int) -> list[tuple[str, list[float]]]:
    """The three rows for one store; with `repeat`, each runs that many times, interleaved
    (floor, before, after, floor, ...), and the samples are pooled, so load from other work
    on the machine falls on all three alike."""
    server = EtcdServer().start() if kind == "etcd" else None
    rows: dict[str, list[float]] = {"floor: bare store watch": [], f"before ({BASELINE_REV})": [],
                                    "after (this checkout)": []}
    floor, before, after = rows.values()
    try:
        for n in range(repeat):
            def target(name: str) -> str:
                if server is None:
                    return str(tmp / f"{name}-{n}.db")
                server.etcdctl("del", "--prefix", PREFIX)   # each run starts from an empty prefix
                return server.endpoint.replace("http://", "etcd://")
            floor += bench_floor(kind, target("floor"), events)
            before += bench_daemon(kind, target("before"), events, tmp / f"{kind}-before-{n}", old_path)
            after += bench_daemon(kind, target("after"), events, tmp / f"{kind}-after-{n}", None)
        return list(rows.items())
    finally:
        if server is not None:
            server.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--stores", default="sqlite,etcd")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--repeat", type=int, default=1, help="runs per row, interleaved and pooled")
    args = ap.parse_args()
    print(f"Event latency, lease write → SubnetAdd start, {args.events} events × {args.repeat} run(s) "
          f"per row, {os.cpu_count()} cores, baseline {args.baseline_rev}\n")
    print("| store | path | p50 ms | p99 ms | max ms | p50 × floor | p99 × floor |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "old").mkdir()
        old_path = baseline_tree(args.baseline_rev, tmp / "old")
        for kind in args.stores.split(","):
            rows = run_store(kind, args.events, tmp, old_path, args.repeat)
            f50, f99 = pct(rows[0][1], 50), pct(rows[0][1], 99)
            for name, lat in rows:
                p50, p99 = pct(lat, 50), pct(lat, 99)
                print(f"| {kind} | {name} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {max(lat) * 1e3:.1f} | "
                      f"{p50 / f50:.1f} | {p99 / f99:.1f} |", flush=True)
    print(f"\n({threading.active_count()} thread(s); python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
