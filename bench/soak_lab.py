"""The pieces of a crash trial (used by bench/soak.py and tests/e2e/test_crash_*.py).

One node daemon (`flannel-ext run`) in a namespace on an underlay, a lease store (a SQLite
file, or a real etcd in the hub namespace), a `StoreWriter` that plays the other nodes by
writing their leases, and `kernel_diff` comparing the node's kernel (`ip -j route`,
`ip -j neigh`, `bridge -j fdb`) with what the store holds.
"""
from __future__ import annotations

import ipaddress
import json
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from etcd_server import EtcdServer  # noqa: E402

from flannel_ext.testing import NodeDaemon, ip_json, wait_for  # noqa: E402
from flannel_ext._util.netns import Underlay, sh  # noqa: E402

NETWORK = ipaddress.IPv4Network("10.50.0.0/16")
SUBNETS = "/coreos.com/network/subnets/"
VXLAN_DEV = "flannel.1"


def _conf(hook: str) -> dict:
    return {"Network": str(NETWORK), "Backend": {"Type": "extension", "Hook": hook}}


def _slow_hostgw(delay: float) -> dict:
    """The tolerant host-gw commands behind a sleep: many calls are in flight at a kill."""
    route = '"$SUBNET" via "$PUBLIC_IP"'
    return {"Network": str(NETWORK), "Backend": {
        "Type": "extension",
        "SubnetAddCommand": f"sleep {delay}; ip route replace {route}",
        "SubnetRemoveCommand": f'sleep {delay}; ip route del {route} 2>/dev/null || '
                               f'[ -z "$(ip route show exact {route})" ]'}}


# name -> (net-conf: a file or a dict, kernel model)
RECIPES: dict[str, tuple[Path | dict, str]] = {
    "shell host-gw (flannel)": (ROOT / "tests" / "flannel-examples" / "extension-hostgw.json", "hostgw"),
    "shell host-gw": (ROOT / "recipes" / "host-gw.json", "hostgw"),
    "shell vxlan": (ROOT / "recipes" / "vxlan.json", "vxlan"),
    "python host-gw": (_conf("host-gw"), "hostgw"),
    "python vxlan": (_conf("vxlan"), "vxlan"),
    "shell host-gw, 0.3 s hook": (_slow_hostgw(0.3), "hostgw"),
}
DEFAULT_RECIPES = ("shell host-gw (flannel)", "python host-gw", "python vxlan")


@dataclass
class Peer:
    public_ip: str
    mac: str

    def value(self) -> str:
        return json.dumps({"PublicIP": self.public_ip, "PublicIPv6": None, "BackendType": "extension",
                           "BackendData": self.mac}, separators=(",", ":"))


class StoreWriter:
    """Writes other nodes' leases from a process in the hub namespace (etcd listens there).
    One JSON line per operation on its stdin, one "ok" back; it retries while etcd is away."""

    def __init__(self, store_url: str, netns: str):
        argv = ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()), store_url]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _call(self, **op) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(op) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        if reply != "ok":
            raise RuntimeError(f"store writer: {reply or 'exited'}")

    def put(self, key: str, value: str) -> None:
        self._call(op="put", key=key, value=value)

    def delete(self, key: str) -> None:
        self._call(op="delete", key=key)

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()  # the writer ends at EOF
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Bed:
    """A node namespace on an underlay, its store, and the model of what the store holds."""

    prefix: str
    store_kind: str                       # "sqlite" or "etcd"
    recipe: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flannel-ext-soak-")))
    leases: dict[str, Peer] = field(default_factory=dict)     # key -> peer (the store's content)
    underlay: Underlay | None = None
    etcd: EtcdServer | None = None
    writer: StoreWriter | None = None
    node: NodeDaemon | None = None
    pool: list[str] = field(default_factory=list)             # keys the burst plays with
    keep: bool = False                                        # keep workdir (a trial failed)

    @property
    def model(self) -> str:
        return RECIPES[self.recipe][1]

    def setup(self, extra: tuple[str, ...] = ()) -> Bed:
        self.underlay = Underlay(self.prefix).create()
        ns = f"{self.prefix}n0"
        self.underlay.add_node(ns, 0)
        if self.store_kind == "etcd":
            host = str(self.underlay.network.network_address + 250)
            sh(["ip", "-n", self.underlay.hub, "addr", "replace", f"{host}/24", "dev", "br0"])
            (self.workdir / "etcd").mkdir()
            self.etcd = EtcdServer(str(self.workdir / "etcd"), netns=self.underlay.hub, host=host).start()
            url = "etcd://" + self.etcd.endpoint.split("://")[1]
        else:
            url = f"sqlite:{self.workdir}/leases.db"
        conf = RECIPES[self.recipe][0]
        if isinstance(conf, dict):
            path = self.workdir / "net-conf.json"
            path.write_text(json.dumps(conf))
            conf = path
        self.writer = StoreWriter(url, self.underlay.hub)
        self.node = NodeDaemon(ns, conf, url, self.workdir, extra=["--hook-retries", "5", *extra])
        self.node.start(timeout=60)
        own = self.node.subnet
        self.pool = [f"10.50.{i}.0-24" for i in range(10, 250)
                     if f"10.50.{i}.0/24" != own][:24]
        return self

    def peer(self, rng: random.Random) -> Peer:
        host = rng.randrange(100, 200)
        mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
        return Peer(str(self.underlay.network.network_address + host), mac)  # type: ignore[union-attr]

    def random_op(self, rng: random.Random) -> None:
        """One change another node could make: a new lease, a changed one, or a deletion."""
        assert self.writer
        key = rng.choice(self.pool)
        if key in self.leases and rng.random() < 0.5:
            self.writer.delete(SUBNETS + key)
            del self.leases[key]
        else:
            peer = self.peer(rng)
            self.writer.put(SUBNETS + key, peer.value())
            self.leases[key] = peer

    # --- the kernel against the store ------------------------------------------------
    def expected(self) -> set[tuple]:
        want: set[tuple] = set()
        for key, peer in self.leases.items():
            subnet = key.replace("-", "/")
            if self.model == "hostgw":
                want.add(("route", subnet, peer.public_ip))
            else:
                gateway = subnet.split("/")[0]
                want |= {("route", subnet, gateway), ("neigh", gateway, peer.mac),
                         ("fdb", peer.mac, peer.public_ip)}
        return want

    def observed(self) -> set[tuple]:
        assert self.node
        ns = self.node.ns
        seen = {("route", r["dst"], r.get("gateway", "")) for r in ip_json(ns, "route", "show")
                if "/" in r.get("dst", "") and ipaddress.ip_network(r["dst"]).subnet_of(NETWORK)}
        if self.model == "vxlan" and _has_link(ns, VXLAN_DEV):
            seen |= {("neigh", n["dst"], n.get("lladdr", "")) for n in ip_json(ns, "neigh", "show", "dev", VXLAN_DEV)
                     if "PERMANENT" in n.get("state", [])}
            out = subprocess.run(["ip", "netns", "exec", ns, "bridge", "-j", "fdb", "show", "dev", VXLAN_DEV],
                                 capture_output=True, text=True, check=True).stdout
            seen |= {("fdb", f["mac"], f["dst"]) for f in json.loads(out or "[]") if f.get("dst")}
        return seen

    def diff(self) -> tuple[int, int]:
        """(stale, missing): kernel entries the store does not want, and wanted ones absent."""
        want, seen = self.expected(), self.observed()
        return len(seen - want), len(want - seen)

    def explain(self) -> str:
        """The entries that differ, and where the node's log is (kept for a failed trial)."""
        want, seen = self.expected(), self.observed()
        self.keep = True
        return (f"stale {sorted(seen - want)} missing {sorted(want - seen)}; "
                f"log {self.node.log_path if self.node else '-'}")

    def settle(self, timeout: float) -> tuple[int, int]:
        """Wait until this daemon is up and the kernel matches the store (or `timeout`); the
        remaining difference. (The kernel may match before a restarted daemon is up; the
        next trial must not signal it before it handles signals.)"""
        node = self.node
        assert node and node.proc
        up = lambda: node.stats().get("pid") == node.proc.pid and node.stats().get("ready")  # noqa: E731
        try:
            wait_for(lambda: up() and self.diff() == (0, 0), timeout, interval=0.2)
        except AssertionError:
            pass
        return self.diff()

    def teardown(self) -> None:
        if self.node:
            self.node.stop()
        if self.writer:
            self.writer.close()
        if self.etcd:
            self.etcd.cleanup()
        if self.underlay:
            self.underlay.destroy()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _has_link(ns: str, name: str) -> bool:
    return any(link.get("ifname") == name for link in ip_json(ns, "link", "show"))


def _writer_main(store_url: str) -> None:
    """The writer process (see StoreWriter)."""
    import time

    if store_url.startswith("sqlite:"):
        from flannel_ext._stores.sqlite import SqliteStore
        store = SqliteStore.from_url(store_url)

        def put(key: str, value: str) -> None:
            store.put_raw(key[len(SUBNETS):], value)

        def delete(key: str) -> None:
            store.delete_key(key[len(SUBNETS):])
    else:
        import base64
        import urllib.request

        base = "http://" + store_url.split("://", 1)[1] + "/v3/kv/"

        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        def call(path: str, payload: dict) -> None:
            request = urllib.request.Request(base + path, json.dumps(payload).encode(),
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=2) as response:
                response.read()

        def put(key: str, value: str) -> None:
            call("put", {"key": b64(key), "value": b64(value)})

        def delete(key: str) -> None:
            call("deleterange", {"key": b64(key)})
    for line in sys.stdin:
        op = json.loads(line)
        deadline = time.monotonic() + 60
        while True:
            try:
                put(op["key"], op["value"]) if op["op"] == "put" else delete(op["key"])
                break
            except Exception as exc:  # noqa: BLE001 - etcd restarting: retry, report at the end
                if time.monotonic() > deadline:
                    print(f"error: {exc}", flush=True)
                    return
                time.sleep(0.1)
        print("ok", flush=True)


if __name__ == "__main__":
    _writer_main(sys.argv[1])
