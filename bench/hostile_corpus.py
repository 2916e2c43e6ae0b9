"""The hostile lease corpus: generated bad entries through the real stores.

    python3 bench/hostile_corpus.py [--entries 1000] [--seed 11] [--stores sqlite,etcd,kube]

A seeded generator writes at least `--entries` entries per store that no flannel would
write (lone surrogates, 100,000-deep nesting, BLOB and bad-UTF-8 keys, huge values,
wrong types, NaN, case-folded duplicate keys, keys ending in a newline, zoned IPv6,
subnets outside Network...) plus valid leases whose BackendData carries shell payloads.
Half go in before `store.list()`, half while `store.watch()` runs, then one healthy
lease. Every event goes through the runtime's validation (`_runtime.validate`) and every
accepted lease through the real shell hook (`sh -c`), as a node would run it.

Each row: entries written, rejected (each bad entry must count exactly once), executed
(files a `$(touch ...)` payload created: must be 0), crashed (exceptions that escaped
the store or the validation: must be 0), whether the healthy lease was delivered.
The stores are real: a SQLite file, an etcd started here on a loopback port (stopped by
PID), and the wire-level Kubernetes fake (tests/kube_fake.py) read by the real client.
`bench/soak.py` imports `run()`; the tests (tests/e2e/test_hostile_corpus.py) drive
the same functions with their fixtures.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import random
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from flannel_ext._config.netconf import NetConf, parse_netconf  # noqa: E402
from flannel_ext._hooks.base import HookContext  # noqa: E402
from flannel_ext._hooks.shell import ShellHook  # noqa: E402
from flannel_ext._runtime.validate import RejectedLease, Skipped, to_remote  # noqa: E402
from flannel_ext._stores.lease import EventType, LeaseEvent  # noqa: E402
from flannel_ext._util.errors import FlannelExtError  # noqa: E402

NETWORK = "10.0.0.0/8"      # room for 65,536 /24 keys, one per entry
GOOD_KEY = "10.255.255.0-24"
GOOD_IP = "192.168.200.1"
SURROGATES = ("\ud800", "\udfff", "a\udc00b", "\ud83d", "x\udbff")


@dataclass(frozen=True)
class Entry:
    """One stored entry: flannel's subnet key and lease JSON, or a Node for the kube store."""

    kind: str                     # the category, for failure messages
    key: str | bytes              # sqlite/etcd key, or the node name
    value: str | bytes = ""       # sqlite/etcd value
    pod_cidr: str = ""            # kube: spec.podCIDR
    annotations: Any = None       # kube: metadata.annotations
    bad: bool = True              # False: valid data that must reach the hook as data


def payloads(canary: Path, tag: str) -> list[str]:
    """Shell payloads that would create `canary/<tag>` if any value became shell code."""
    touch = f"touch {canary}/{tag}"
    return [f"$({touch})", f"`{touch}`", f"; {touch}; ", f"\n{touch}\n", f"' ; {touch} ; '",
            f'" ; {touch} ; "', f"&& {touch}", f"| {touch}", f"$({touch})\n"]


def _lease(public_ip: Any = None, *, data: Any = None, v6: Any = None, btype: Any = "extension",
           extra: dict | None = None) -> dict:
    doc: dict[str, Any] = {"PublicIP": GOOD_IP if public_ip is None else public_ip, "PublicIPv6": v6,
                           "BackendType": btype}
    if data is not None:
        doc["BackendData"] = data
    doc.update(extra or {})
    return doc


def _dumps(doc: Any) -> str:
    return json.dumps(doc)   # ensure_ascii: lone surrogates travel as \\udXXX escapes


class _Generator:
    """The seeded corpus. `for_json_stores` and `for_kube` share the value pools."""

    def __init__(self, seed: int, canary: Path):
        self.rng = random.Random(seed)
        self.canary = canary
        self.n = 0

    def key(self) -> str:
        self.n += 1
        return f"10.{self.n // 256}.{self.n % 256}.0-24"

    def tag(self) -> str:
        return f"c{self.n}"

    def nested(self, depth: int | None = None) -> str:
        depth = depth or self.rng.choice((65, 100, 1000, 5000, 100_000))
        opener, closer = self.rng.choice((("[", "]"), ('{"a":', "}")))
        return opener * depth + "1" + closer * depth

    def bad_public_ips(self) -> list[Any]:
        p = self.rng.choice(payloads(self.canary, self.tag()))
        digits = str.maketrans("0123456789", self.rng.choice(("٠١٢٣٤٥٦٧٨٩", "０１２３４５６７８９")))
        return [f"192.168.7.9{p}", "1.2.3.4\n", " 1.2.3.4", "010.1.1.1", "1.2.3", "256.1.1.1", "0.0.0.0",
                "127.0.0.1", "224.0.0.1", "255.255.255.255", "169.254.1.1", f"10.{self.rng.randrange(256)}.3.4",
                "fd00::1", "1.2.3.4\x00", "", "1.2.3.4/24", "1.2.3.4%eth0", "192.168.1.1".translate(digits),
                self.rng.choice(SURROGATES), 1, 3232235777, True, [], {}, 1.5]

    def bad_public_ipv6s(self) -> list[Any]:
        p = self.rng.choice(payloads(self.canary, self.tag()))
        return [f"fe80::1%{p}", f"fd00::1%{p}", "fd00::1%eth0\n", "fd00::1%\n", "::1", "ff02::1", "::",
                "1.2.3.4", "fd00::1\n", "fd00::zz", "fe80::1", self.rng.choice(SURROGATES), 6, []]

    def bad_data_raw(self) -> list[str]:
        """BackendData as raw JSON text (extension leases need a small string)."""
        p = self.rng.choice(payloads(self.canary, self.tag()))
        return [_dumps(self.rng.choice(SURROGATES)), self.nested(), "5", "[]", _dumps({"x": p}), "true",
                _dumps("a\x00b"), _dumps("x" * self.rng.choice((4097, 5000, 60_000))), "NaN", "Infinity",
                "-Infinity", "1e999", "1" * 5000, '"\\ud800"', '"\\udc00\\ud800"']

    def data_values(self) -> list[str]:
        """Valid BackendData strings: they must reach the hook, as data only."""
        return payloads(self.canary, self.tag()) + ["\u2028", "\x1b[2J", "é", "\U0001d11e", "<>&", "\n"]

    def bad_documents(self) -> list[str | bytes]:
        p = self.rng.choice(payloads(self.canary, self.tag()))
        good = _dumps(_lease())
        return ["", "{", "}", "[]", "null", '"str"', "1", f"not json{p}", good[:-1], good[:-1] + ",}",
                "// c\n" + good, "\ufeff" + good, good.encode("utf-16"), b"\xff\xfe" + good.encode(),
                good.replace('"extension"', '"ext\xff"').encode("latin-1"),
                "{'PublicIP': '192.168.1.1'}", good + good, good + " " * 70_000, self.nested(100_000),
                '"\\' * 30_000 + "[" * 70,   # quadratic for a regex that matches whole strings
                '{"PublicIP":"192.168.1.1","PublicIP":"1.2.3.4%x"}',
                '{"PublicIP":"192.168.1.1","publicip":"0.0.0.0"}',
                '{"PublicIP":"192.168.1.1","BackendType":"extension","BackendData":"ok","bac\u212aendData":5}',
                '{"PublicIP":"192.168.1.1","BackendType":"extension","BackendData":"ok","BACKENDDATA":[1]}',
                '{"PublicIP":"192.168.1.1","\\ud800":1,"BackendType":"extension"}']

    def bad_keys(self) -> list[str | bytes]:
        key = self.key()
        p = self.rng.choice(payloads(self.canary, self.tag()))
        a, b = self.n // 256, self.n % 256
        return [key + "\n", key + " ", " " + key, key + p, key + "\x00", f"10.{a}.{b}.7-24", f"010.{a}.{b}.0-24",
                f"10.{a}.{b}.0-024", f"10.{a}.{b}.0-33", f"10.{a}.{b}.0-", "-24", "", "9" * 5000,
                key.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")), f"{key}&FD00::-64",
                f"{key}&fd00:0:0:0::-64", f"{key}&::-0", f"{key}&fe80::-64", "0.0.0.0-0", f"11.{a}.{b}.0-24",
                f"10.{a}.{b}.0-25", key.encode() + b"\xff", b"\xff\xfe" + key.encode(), key.encode("utf-16")]

    def for_json_stores(self, count: int) -> list[Entry]:
        """Entries for the sqlite and etcd stores: at least `count`, about 1 in 8 valid data."""
        out: list[Entry] = []
        good = _dumps(_lease())
        while len({entry.key for entry in out}) < count:
            for ip in self.bad_public_ips():
                out.append(Entry("PublicIP", self.key(), _dumps(_lease(ip))))
            for ip6 in self.bad_public_ipv6s():
                out.append(Entry("PublicIPv6", self.key(), _dumps(_lease(v6=ip6))))
            for btype in (5, [], {}, True, self.rng.choice(SURROGATES)):
                out.append(Entry("BackendType", self.key(), _dumps(_lease(btype=btype))))
            for raw in self.bad_data_raw():
                doc = _dumps(_lease())[:-1] + f',"BackendData":{raw}}}'
                out.append(Entry("BackendData", self.key(), doc))
            for doc in self.bad_documents():
                out.append(Entry("document", self.key(), doc))
            for key in self.bad_keys():
                out.append(Entry("key", key, good))
            for text in self.data_values():
                out.append(Entry("data", self.key(), _dumps(_lease(data=text)), bad=False))
        return list({entry.key: entry for entry in reversed(out)}.values())[::-1]   # keys unique

    def for_kube(self, count: int) -> list[Entry]:
        """Nodes for the kube store: the same pools as annotations and PodCIDRs."""
        out: list[Entry] = []

        def node(kind: str, *, ip: Any = GOOD_IP, data: Any = None, cidr: str | None = None,
                 bad: bool = True, annotations: Any = None) -> None:
            key = self.key()
            ann = annotations if annotations is not None else {
                PREFIX + "kube-subnet-manager": "true", PREFIX + "backend-type": "extension",
                **({} if ip is None else {PREFIX + "public-ip": ip if isinstance(ip, str) else _dumps(ip)}),
                **({} if data is None else {PREFIX + "backend-data": data})}
            out.append(Entry(kind, f"node-{self.n}", pod_cidr=cidr or key.replace("-", "/"),
                             annotations=ann, bad=bad))

        while len(out) < count:
            for ip in self.bad_public_ips():
                node("public-ip", ip=ip)
            node("public-ip", ip=None)
            for raw in self.bad_data_raw():
                node("backend-data", data=raw)
            for doc in self.bad_documents():
                if doc not in ("", "null", '"str"'):   # valid backend-data (none, empty, a string)
                    node("backend-data", data=doc if isinstance(doc, str) else doc.decode("latin-1"))
            a, b = (self.n + 1) // 256, (self.n + 1) % 256
            for cidr in (f"10.{a}.{b}.0/24\n", f"11.{a}.{b}.0/24", f"10.{a}.{b}.0/25", "not-a-cidr", "::/0",
                         "fe80::/64", " ", f"10.{a}.{b}.0/24%x"):
                node("podCIDR", cidr=cidr)
            node("annotations", annotations={PREFIX + "kube-subnet-manager": "true", PREFIX + "public-ip": 7})
            for text in self.data_values():
                node("data", data=_dumps(text), bad=False)
        return out


PREFIX = "flannel.alpha.coreos.com/"


# --- running the corpus ------------------------------------------------------------

@dataclass
class Tally:
    rejected: int = 0
    accepted: int = 0
    skipped: int = 0
    crashed: int = 0
    hook_failed: int = 0
    good: bool = False
    errors: list[str] | None = None


class _Node:
    """The runtime's event handling, reduced to what the corpus checks: validation, then
    the real shell hook for every accepted lease."""

    def __init__(self, workdir: Path, seen: Path):
        self.config: NetConf = parse_netconf(json.dumps({"Network": NETWORK, "SubnetLen": 24, "Backend": {
            "Type": "extension",
            "SubnetAddCommand": f"read -r DATA; printf '%s %s\\n' \"$SUBNET\" \"$PUBLIC_IP\" >> {seen}"}}))
        self.hook = ShellHook.from_config(self.config, timeout=10.0)
        self.ctx = HookContext(network=self.config.network, options=dict(self.config.backend),
                               log=logging.getLogger("hostile-corpus"), state_dir=workdir / "state")
        self.tally = Tally(errors=[])

    def handle(self, event: LeaseEvent) -> None:
        tally = self.tally
        try:
            if event.type is EventType.REJECTED:
                tally.rejected += 1
                return
            if event.type is not EventType.ADDED or event.lease is None:
                return
            remote = to_remote(event.lease, self.config, self.hook)
        except RejectedLease:
            tally.rejected += 1
            return
        except Skipped:
            tally.skipped += 1
            return
        except Exception as exc:  # noqa: BLE001 - what the corpus is looking for
            tally.crashed += 1
            tally.errors.append(f"validate {event.key!r}: {type(exc).__name__}: {exc}")
            return
        tally.accepted += 1
        tally.good = tally.good or event.lease.key == GOOD_KEY
        try:
            self.hook.subnet_add(remote, self.ctx)
        except FlannelExtError:
            tally.hook_failed += 1


def drive(store: Any, write: Callable[[Entry], None], entries: list[Entry], workdir: Path, canary: Path,
          good: Entry, *, timeout: float = 60.0) -> dict:
    """Half the entries, list(), the other half and the good lease, watch until it arrives."""
    node = _Node(workdir, workdir / "seen")
    started, half = time.monotonic(), len(entries) // 2
    stop = threading.Event()
    try:
        for entry in entries[:half]:
            write(entry)
        snapshot = store.list()
        for event in snapshot.rejected:
            node.handle(event)
        for lease in snapshot.leases:
            node.handle(LeaseEvent.added(lease))
        for entry in entries[half:] + [good]:
            write(entry)
        expected = sum(entry.bad for entry in entries)
        deadline = time.monotonic() + timeout
        for batch in _batches(store, snapshot.revision, stop, deadline):
            for event in batch:
                node.handle(event)
            if node.tally.good and node.tally.rejected >= expected:
                break
    except Exception as exc:  # noqa: BLE001 - a store that raises is the failure measured
        node.tally.crashed += 1
        node.tally.errors.append(f"store: {type(exc).__name__}: {exc}")
    finally:
        stop.set()
    tally = node.tally
    return {"entries": len(entries), "bad": sum(e.bad for e in entries), "rejected": tally.rejected,
            "accepted": tally.accepted, "skipped": tally.skipped, "hook_failed": tally.hook_failed,
            "executed": len(list(canary.iterdir())) if canary.exists() else 0, "crashed": tally.crashed,
            "good_delivered": tally.good, "seconds": round(time.monotonic() - started, 1),
            "errors": tally.errors[:10]}


def _batches(store: Any, revision: int, stop: threading.Event, deadline: float) -> Iterator[list]:
    """The store's watch batches until `deadline` (a watch that hangs still ends then)."""
    out: queue.Queue = queue.Queue()

    class _Sink:
        def deliver(self, batch: list) -> None:
            out.put(batch)

        def failed(self, error: BaseException) -> None:
            out.put(error)
    watch = store.watch(revision, _Sink())
    try:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                item = out.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        watch.close()


# --- the three stores ----------------------------------------------------------------

def run_sqlite(workdir: Path, entries: list[Entry], canary: Path, **kw: Any) -> dict:
    from flannel_ext._stores.sqlite import SqliteStore
    db = workdir / "leases.db"
    store = SqliteStore(db)
    writer = sqlite3.connect(db, isolation_level=None, timeout=30)
    writer.execute("PRAGMA synchronous = OFF")

    def write(entry: Entry) -> None:
        # As any other writer of the file could: raw SQL. Bytes values are stored as TEXT
        # that is not UTF-8; bytes keys as BLOBs, or as such TEXT when they start with 0xff.
        value = "CAST(? AS TEXT)" if isinstance(entry.value, bytes) else "?"
        key = "CAST(? AS TEXT)" if isinstance(entry.key, bytes) and entry.key[:1] == b"\xff" else "?"
        writer.execute("BEGIN IMMEDIATE")
        rev = writer.execute(f"INSERT INTO events (key, type, value) VALUES ({key}, 'put', {value})",
                             (entry.key, entry.value)).lastrowid
        writer.execute(f"INSERT INTO leases VALUES ({key}, {value}, NULL, ?)", (entry.key, entry.value, rev))
        writer.execute("COMMIT")
    try:
        return {"store": "sqlite", **drive(store, write, entries, workdir, canary, _good(), **kw)}
    finally:
        writer.close()
        store.close()


def run_etcd(endpoint: str, workdir: Path, entries: list[Entry], canary: Path, **kw: Any) -> dict:
    from flannel_ext._stores.etcd import EtcdStore
    from flannel_ext._stores.etcd_watch import b64
    prefix = f"/hostile-{os.getpid()}-{time.monotonic_ns()}"
    store = EtcdStore.from_url(endpoint, prefix=prefix)

    def write(entry: Entry) -> None:
        key = entry.key if isinstance(entry.key, bytes) else entry.key.encode("utf-8", "surrogatepass")
        value = entry.value if isinstance(entry.value, bytes) else entry.value.encode("utf-8", "surrogatepass")
        store.gateway.call("/kv/put", {"key": b64(f"{prefix}/subnets/".encode() + key), "value": b64(value)})
    try:
        return {"store": "etcd", **drive(store, write, entries, workdir, canary, _good(), **kw)}
    finally:
        store.close()


def run_kube(fake: Any, workdir: Path, entries: list[Entry], canary: Path, **kw: Any) -> dict:
    from flannel_ext._stores.kube import KubeStore
    store = KubeStore.from_options(kubeconfig=str(fake.kubeconfig_path), node_name="hostile-self",
                                   heartbeat=0.2)

    def write(entry: Entry) -> None:
        fake.add_node(str(entry.key), entry.pod_cidr, annotations=entry.annotations)
    good = Entry("good", "node-good", pod_cidr=GOOD_KEY.replace("-", "/"), bad=False, annotations={
        PREFIX + "kube-subnet-manager": "true", PREFIX + "backend-type": "extension",
        PREFIX + "public-ip": GOOD_IP, PREFIX + "backend-data": "null"})
    try:
        return {"store": "kube", **drive(store, write, entries, workdir, canary, good, **kw)}
    finally:
        store.close()


def _good() -> Entry:
    return Entry("good", GOOD_KEY, _dumps(_lease(data="healthy")), bad=False)


def corpus(store: str, canary: Path, count: int = 1000, seed: int = 11) -> list[Entry]:
    gen = _Generator(seed, canary)
    return gen.for_kube(count) if store == "kube" else gen.for_json_stores(count)


def run(stores: tuple[str, ...] = ("sqlite", "etcd", "kube"), entries: int = 1000, seed: int = 11) -> list[dict]:
    """One row per store: store, entries, rejected, executed, crashed (and more detail).
    A store that cannot be set up here (no etcd binary) gives a row with the error."""
    rows = []
    for name in stores:
        with tempfile.TemporaryDirectory(prefix=f"hostile-{name}-") as tmp:
            workdir, canary = Path(tmp), Path(tmp) / "canary"
            canary.mkdir()
            items = corpus(name, canary, entries, seed)
            try:
                rows.append(_run_one(name, workdir, items, canary))
            except Exception as exc:  # noqa: BLE001 - one store's set-up failing must not hide the others
                rows.append({"store": name, "entries": 0, "bad": 0, "rejected": 0, "accepted": 0, "skipped": 0,
                             "hook_failed": 0, "executed": 0, "crashed": 0, "good_delivered": False,
                             "seconds": 0.0, "errors": [f"not run: {type(exc).__name__}: {exc}"]})
    return rows


def _run_one(name: str, workdir: Path, items: list[Entry], canary: Path) -> dict:
    if name == "sqlite":
        return run_sqlite(workdir, items, canary)
    if name == "etcd":
        from etcd_server import ETCD, EtcdServer   # tests/etcd_server.py: stops etcd by PID
        if not Path(ETCD).exists():
            raise RuntimeError("etcd is not installed (apt install etcd-server)")
        with EtcdServer() as server:
            return run_etcd(server.endpoint, workdir, items, canary)
    if name == "kube":
        from kube_fake import FakeKubeAPI
        fake = FakeKubeAPI(workdir)
        quiet = logging.getLogger("flannel_ext._stores.kube")
        level = quiet.level
        quiet.setLevel(logging.ERROR)   # re-listing after the client refuses a node is expected here
        try:
            return run_kube(fake, workdir, items, canary)
        finally:
            quiet.setLevel(level)
            fake.close()
    raise ValueError(f"unknown store {name!r}: use sqlite, etcd or kube")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1000, help="at least this many entries per store")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--stores", default="sqlite,etcd,kube")
    args = parser.parse_args(argv)
    rows = run(tuple(filter(None, args.stores.split(","))), args.entries, args.seed)
    head = f"{'store':<7} {'entries':>7} {'bad':>5} {'rejected':>8} {'accepted':>8} {'executed':>8} " \
           f"{'crashed':>7} {'healthy lease':>13} {'seconds':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['store']:<7} {r['entries']:>7} {r['bad']:>5} {r['rejected']:>8} {r['accepted']:>8} "
              f"{r['executed']:>8} {r['crashed']:>7} {'delivered' if r['good_delivered'] else 'MISSING':>13} "
              f"{r['seconds']:>7}")
        for error in r["errors"]:
            print(f"    {error}")
    ok = all(r["rejected"] == r["bad"] and not r["executed"] and not r["crashed"] and r["good_delivered"]
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
