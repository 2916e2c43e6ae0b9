#!/usr/bin/env python3
"""Event latency through a running node: lease write → SubnetAdd hook start.

A `flannel-ext run` daemon (sqlite store, scratch namespace) runs a SubnetAdd command
that only records the time it started. We write 200 leases one by one and measure
write → hook start. Baseline, same run: the bare store watch (write → watch yields),
i.e. the part of the latency the daemon cannot remove.

    sudo python3 bench/bench_events.py [--events 200]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flannel_ext._util.netns import Underlay  # noqa: E402
from flannel_ext._stores.sqlite import SqliteStore  # noqa: E402
from flannel_ext.testing import NodeDaemon, wait_for  # noqa: E402
from _common import pct  # noqa: E402

VALUE = '{"PublicIP":"192.168.91.%d","PublicIPv6":null,"BackendType":"extension"}'


def bench_store_watch(db: str, events: int) -> list[float]:
    """Baseline: a watcher thread on its own connection sees each write."""
    writer, reader = SqliteStore(db), SqliteStore(db)
    seen: dict[str, float] = {}
    stop = threading.Event()
    rev = reader.list().revision

    def watch():
        for batch in reader.watch(rev, stop):
            for ev in batch:
                seen.setdefault(ev.key, time.time())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    lat = []
    for i in range(events):
        key = f"10.91.{i % 250}.{(i // 250) * 64}-26"
        start = time.time()
        writer.put_raw(key, VALUE % (10 + i % 200))
        wait_for(lambda: key in seen, 5, 0.001)
        lat.append(seen[key] - start)
    stop.set()
    thread.join(3)
    writer.close()
    reader.close()
    return lat


def bench_daemon(workdir: str, events: int) -> list[float]:
    net = Underlay(f"bev{os.getpid() % 10000}-", cidr="192.168.91.0/24").create()
    try:
        ns = net.prefix + "n0"
        net.add_node(ns, 0)
        conf = os.path.join(workdir, "net-conf.json")
        with open(conf, "w") as f:
            json.dump({"Network": "10.92.0.0/16", "SubnetLen": 26, "Backend": {
                "Type": "extension",
                "SubnetAddCommand": "echo \"$SUBNET $(date +%s.%N)\" >> starts"}}, f)
        db = os.path.join(workdir, "daemon.db")
        node = NodeDaemon(ns, conf, f"sqlite:{db}", workdir).start()
        starts_file = node.state_dir / "starts"
        store = SqliteStore(db)
        writes = {}
        try:
            for i in range(events):
                subnet = f"10.92.{1 + i % 250}.{(i // 250) * 64}"
                writes[f"{subnet}/26"] = time.time()
                store.put_raw(f"{subnet}-26", VALUE % (10 + i % 200))
                wait_for(lambda: starts_file.exists() and len(starts_file.read_text().splitlines()) > i, 5, 0.001)
        finally:
            store.close()
            node.stop()
        starts = dict(line.split() for line in starts_file.read_text().splitlines())
        return [float(starts[s]) - writes[s] for s in writes]
    finally:
        net.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        base = bench_store_watch(os.path.join(workdir, "base.db"), args.events)
        full = bench_daemon(workdir, args.events)
    rows = [("store watch (baseline)", base), ("lease write → SubnetAdd start (daemon)", full)]
    b50, b99 = pct(base, 50), pct(base, 99)
    print(f"Event latency, {args.events} events, sqlite store, {os.cpu_count()} cores\n")
    print("| path | p50 ms | p99 ms | max ms | p50 × baseline | p99 × baseline |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, lat in rows:
        p50, p99 = pct(lat, 50), pct(lat, 99)
        print(f"| {name} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {max(lat) * 1e3:.1f} | "
              f"{p50 / b50:.1f} | {p99 / b99:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
