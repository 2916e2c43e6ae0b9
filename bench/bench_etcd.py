#!/usr/bin/env python3
"""EtcdStore benchmark: watch event latency and initial sync, with same-run baselines.

Starts its own etcd (Debian's etcd-server) on a free loopback port; needs no root.

  python3 bench/bench_etcd.py [--events 200] [--leases 1000] [--reps 5]

Latency: a lease value is PUT (with its own etcd lease, as flannel writes it) and the time
until the watcher has it is recorded, one write at a time. Baselines, same etcd, same run:
a bare gateway `/v3/watch` stream read with `requests` (what our store adds on top of the
gateway: parsing, cache, TTL lookup, queue hand-off) and `etcdctl watch` (Go gRPC client).
Initial sync: fresh store, list() with N leases present, then watch from that revision until
a lease written just after the list arrives. Baseline: etcd3gw's `get_prefix`.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from etcd3gw.client import Etcd3Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from etcd_server import ETCDCTL, EtcdServer  # noqa: E402

from flannel_ext._stores.etcd import EtcdStore  # noqa: E402
from flannel_ext._stores.etcd_watch import prefix_end  # noqa: E402
from _common import pct  # noqa: E402

PREFIX = "/coreos.com/network/subnets/"


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def value(i: int) -> str:
    return ('{"PublicIP":"192.168.%d.%d","PublicIPv6":null,"BackendType":"extension",'
            '"BackendData":"aa:bb:cc:dd:%02x:%02x"}' % (i // 250, i % 250 + 1, i // 256, i % 256))


def key(i: int, base: int = 0) -> str:
    n = base + i
    return f"{PREFIX}10.{n // 256}.{n % 256}.0-24"


class Writer:
    """Puts leases through the gateway, each with a pre-granted etcd lease (not timed)."""

    def __init__(self, endpoint: str):
        self.url, self.http = endpoint + "/v3", requests.Session()

    def grant(self, ttl: int = 3600) -> int:
        return int(self.http.post(self.url + "/lease/grant", json={"TTL": ttl}).json()["ID"])

    def put(self, k: str, v: str, lease: int) -> None:
        self.http.post(self.url + "/kv/put", json={"key": b64(k), "value": b64(v), "lease": lease}).raise_for_status()


def measure(writer: Writer, seen: dict, cond: threading.Condition, keys: list[str]) -> list[float]:
    """Write each key, wait until a watcher recorded it; returns latencies in ms."""
    leases = [writer.grant() for _ in keys]
    out = []
    for k, lease_id in zip(keys, leases, strict=True):
        t0 = time.perf_counter()
        writer.put(k, value(len(out)), lease_id)
        with cond:
            if not cond.wait_for(lambda: k in seen, 10):
                raise RuntimeError(f"watcher never saw {k}")
        out.append((seen[k] - t0) * 1000)
        time.sleep(0.005)   # one event in flight at a time
    return out


def latency_store(server: EtcdServer, n: int, base: int) -> list[float]:
    store = EtcdStore.from_url(server.endpoint)
    seen, cond, stop = {}, threading.Condition(), threading.Event()

    def run():
        for batch in store.watch(store.list().revision, stop):
            now = time.perf_counter()
            with cond:
                for ev in batch:
                    seen.setdefault(PREFIX + ev.key, now)
                cond.notify_all()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    try:
        return measure(Writer(server.endpoint), seen, cond, [key(i, base) for i in range(n)])
    finally:
        stop.set()
        t.join(5)
        store.close()


def latency_bare_gateway(server: EtcdServer, n: int, base: int) -> list[float]:
    seen, cond = {}, threading.Condition()
    resp = requests.post(server.endpoint + "/v3/watch", stream=True, json={"create_request": {
        "key": b64(PREFIX), "range_end": b64(prefix_end(PREFIX.encode()))}})

    def run():
        try:
            for line in resp.iter_lines(chunk_size=None):
                now = time.perf_counter()
                for ev in json.loads(line).get("result", {}).get("events", []):
                    with cond:
                        seen.setdefault(base64.b64decode(ev["kv"]["key"]).decode(), now)
                        cond.notify_all()
        except requests.RequestException:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    try:
        return measure(Writer(server.endpoint), seen, cond, [key(i, base) for i in range(n)])
    finally:
        resp.raw.shutdown()
        resp.close()
        t.join(5)


def latency_etcdctl(server: EtcdServer, n: int, base: int) -> list[float]:
    seen, cond = {}, threading.Condition()
    proc = subprocess.Popen([ETCDCTL, "--endpoints", server.endpoint, "watch", "--prefix", PREFIX],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, ETCDCTL_API="3"))

    def run():
        for line in proc.stdout:   # PUT / key / value
            if line.startswith(PREFIX):
                with cond:
                    seen.setdefault(line.strip(), time.perf_counter())
                    cond.notify_all()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    try:
        return measure(Writer(server.endpoint), seen, cond, [key(i, base) for i in range(n)])
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()
        t.join(5)


def initial_sync(server: EtcdServer, reps: int, resolve_ttl: bool) -> list[float]:
    times, writer = [], Writer(server.endpoint)
    for rep in range(reps):
        probe = f"{PREFIX}172.16.{rep}.0-24"
        store = EtcdStore.from_url(server.endpoint, resolve_ttl=resolve_ttl)
        stop, got = threading.Event(), threading.Event()
        t0 = time.perf_counter()
        snap = store.list()

        def run():
            for batch in store.watch(snap.revision, stop):
                if any(PREFIX + ev.key == probe for ev in batch):
                    got.set()
                    return

        t = threading.Thread(target=run, daemon=True)
        t.start()
        writer.put(probe, value(rep), 0)
        if not got.wait(30):
            raise RuntimeError("initial sync: probe lease never arrived")
        times.append((time.perf_counter() - t0) * 1000)
        stop.set()
        t.join(5)
        store.close()
        requests.post(server.endpoint + "/v3/kv/deleterange", json={"key": b64(probe)})
    return times


def list_baseline(server: EtcdServer, reps: int) -> list[float]:
    client = Etcd3Client(host="127.0.0.1", port=server.client_port)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        client.get_prefix(PREFIX)
        times.append((time.perf_counter() - t0) * 1000)
    client.session.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--leases", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with EtcdServer() as server:
        n = args.events
        bare = latency_bare_gateway(server, n, 0)
        ctl = latency_etcdctl(server, n, 1000)
        ours = latency_store(server, n, 2000)
        requests.post(server.endpoint + "/v3/kv/deleterange",
                      json={"key": b64(PREFIX), "range_end": b64(prefix_end(PREFIX.encode()))})
        writer = Writer(server.endpoint)
        for i in range(args.leases):
            writer.put(key(i, 4000), value(i), writer.grant())
        sync_ttl = initial_sync(server, args.reps, True)
        sync_plain = initial_sync(server, args.reps, False)
        base_list = list_baseline(server, args.reps)

    rows = [("event latency, EtcdStore.watch", ours), ("event latency, bare gateway stream (baseline)", bare),
            ("event latency, `etcdctl watch` gRPC (baseline)", ctl)]
    print(f"\netcd {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]}, "
          f"{os.cpu_count()} CPUs, {n} events, {args.leases} leases, {args.reps} reps\n")
    print("| measurement | p50 ms | p99 ms | max ms | p50 vs bare gateway | p99 vs bare gateway |")
    print("|---|---|---|---|---|---|")
    for name, vals in rows:
        print(f"| {name} | {pct(vals, 50):.2f} | {pct(vals, 99):.2f} | {max(vals):.2f} | "
              f"{pct(vals, 50) / pct(bare, 50):.2f}x | {pct(vals, 99) / pct(bare, 99):.2f}x |")
    print(f"\n| initial sync, {args.leases} leases | median ms | min ms | vs etcd3gw get_prefix |")
    print("|---|---|---|---|")
    for name, vals in (("list() + watch (default)", sync_plain),
                       ("list() + watch, resolve_ttl=True", sync_ttl),
                       ("etcd3gw get_prefix (baseline)", base_list)):
        print(f"| {name} | {statistics.median(vals):.1f} | {min(vals):.1f} | "
              f"{statistics.median(vals) / statistics.median(base_list):.1f}x |")
    target = pct(ours, 99) <= 100
    print(f"\ntarget p99 <= 100 ms: {'met' if target else 'MISSED'}")
    return 0 if target else 1


if __name__ == "__main__":
    sys.exit(main())
