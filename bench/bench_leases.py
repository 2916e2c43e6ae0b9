#!/usr/bin/env python3
"""`flannel-ext leases` on big stores, against a same-run baseline. Needs no root.

  python3 bench/bench_leases.py [--leases 1000,10000] [--reps 3]

For each size: the whole `flannel-ext leases [--json]` process (interpreter start, read,
render) on a SQLite store and on a real etcd (each lease with its own 24 h etcd lease, as
flanneld writes them; `leases` asks etcd for every TTL). Baselines, same store, same run:
`flannel-ext --version` (the interpreter and CLI start-up alone) for the process, and the
store's own `list()` in-process (SqliteStore; EtcdStore without TTLs).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from etcd_server import EtcdServer  # noqa: E402

from flannel_ext._stores.etcd import EtcdStore  # noqa: E402
from flannel_ext._stores.lease import LeaseAttrs  # noqa: E402
from flannel_ext._stores.sqlite import SqliteStore  # noqa: E402


def key(i: int) -> str:
    return f"10.{i // 256}.{i % 256}.0-24"


def timed(fn, reps: int) -> float:
    """Median seconds of `reps` calls."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "flannel_ext", *args], check=True, capture_output=True, timeout=600)


def fill_sqlite(path: str, n: int) -> None:
    store = SqliteStore(path)
    value = LeaseAttrs.with_string_data("192.168.1.1", "aa:bb:cc:dd:ee:ff").to_json()
    with store._write(store._conn):     # one transaction: the fill is not what is measured
        for i in range(n):
            store._put(store._conn, key(i), value, time.time() + 86400)
    store.close()


def fill_etcd(server: EtcdServer, n: int) -> None:
    store = EtcdStore.from_url(f"etcd://127.0.0.1:{server.client_port}")
    value = LeaseAttrs.with_string_data("192.168.1.1", "aa:bb:cc:dd:ee:ff").to_json()
    import base64
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    for i in range(n):
        grant = store.gateway.call("/lease/grant", {"TTL": 86400, "ID": 0})
        store.gateway.call("/kv/put", {"key": b64(f"/coreos.com/network/subnets/{key(i)}"),
                                       "value": b64(value), "lease": int(grant["ID"])})
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leases", default="1000,10000")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    start_up = timed(lambda: cli("--version"), args.reps)
    print(f"process baseline: flannel-ext --version {start_up * 1000:.0f} ms\n")
    print("| store | leases | `leases` ms | `leases --json` ms | list() ms (baseline) | "
          "`leases` − start-up ms | ÷ list() |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in map(int, args.leases.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            db = f"{tmp}/leases.db"
            fill_sqlite(db, n)
            table = timed(lambda: cli("leases", "--store", f"sqlite:{db}"), args.reps)
            as_json = timed(lambda: cli("leases", "--store", f"sqlite:{db}", "--json"), args.reps)
            store = SqliteStore(db)
            base = timed(store.list, args.reps)
            store.close()
            extra = table - start_up
            print(f"| sqlite | {n} | {table * 1000:.0f} | {as_json * 1000:.0f} | {base * 1000:.0f} | "
                  f"{extra * 1000:.0f} | {extra / base:.1f} |")
        if n > 2000:
            continue     # 10k etcd leases take minutes to write one by one
        with EtcdServer() as server:
            fill_etcd(server, n)
            url = f"etcd://127.0.0.1:{server.client_port}"
            table = timed(lambda: cli("leases", "--store", url), args.reps)
            as_json = timed(lambda: cli("leases", "--store", url, "--json"), args.reps)
            store = EtcdStore.from_url(url)
            base = timed(store.list, args.reps)
            store.close()
            extra = table - start_up
            print(f"| etcd | {n} | {table * 1000:.0f} | {as_json * 1000:.0f} | {base * 1000:.0f} | "
                  f"{extra * 1000:.0f} | {extra / base:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
