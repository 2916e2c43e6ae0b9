"""Cluster scale through the daemon's real path: join, steady-state latency and memory at N leases.

For each store (sqlite, etcd), recipe (host-gw, vxlan: the Python recipes) and N (``--sizes``):

* **join**: N remote leases are already in the store; `flannel-ext run` starts in a node
  namespace. Start-up runs from spawning the process to `subnet.env`; the join from
  `subnet.env` to the end of the last SubnetAdd batch (its trace line), then the kernel
  is checked to hold every entry. Each batch's duration is kept, to show whether it
  depends on how many entries the kernel already has.
* **floor**, same run: the same kernel entries loaded with `ip -batch` (and `bridge -batch`
  for the FDB) into a fresh namespace, from files, so the floor is the kernel plus iproute2
  and nothing else.
* **steady state**: one lease added, then removed, `--events` times: store write → the
  SubnetAdd/SubnetRemove trace line (the kernel entry is in place when it is emitted).
* **memory**: the daemon's VmRSS (/proc/PID/status) idle after the join.

Everything runs in namespaces this script creates and always removes; etcd runs on the
node namespace's loopback:

    sudo python3 bench/bench_scale.py [--sizes 10,1000,10000] [--stores sqlite,etcd]
        [--recipes host-gw,vxlan] [--events 30] [--json results.json]

With ``BENCH_PROFILE=FILE`` (and py-spy installed) the steady-state phase is sampled into
FILE (py-spy's raw, collapsed-stack format).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from _common import pct  # noqa: E402
from flannel_ext._util.netns import Underlay, create_netns, delete_netns, sh  # noqa: E402

NETWORK, UNDERLAY, OWN_IP = "10.0.0.0/8", "172.16.0.0/12", "172.16.0.1"
DEV = "flannel.1"
BATCH = 1024                 # the dispatcher's batch size
PREFIX = "/coreos.com/network/subnets/"


# --- the cluster's leases ----------------------------------------------------------------
def lease_entry(i: int) -> tuple[str, str, str, str]:
    """Remote node i (1-based): (store key, subnet, public IP, VTEP MAC); /24s from 10.0.0.0/8."""
    a, b = (i >> 8) & 255, i & 255
    subnet = f"10.{a}.{b}.0/24" if i < 65536 else ""
    public = str(ipaddress.IPv4Address("172.18.0.0") + i)
    mac = f"02:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:00:01"
    return subnet.replace("/", "-"), subnet, public, mac


def lease_value(public: str, mac: str) -> str:
    return json.dumps({"PublicIP": public, "PublicIPv6": None, "BackendType": "extension",
                       "BackendData": mac}, separators=(",", ":"))


class SqliteCluster:
    def __init__(self, workdir: str):
        from flannel_ext._stores.sqlite import SqliteStore
        self.path = os.path.join(workdir, "leases.db")
        self.store = SqliteStore(self.path)
        self.url = f"sqlite:{self.path}"

    def fill(self, first: int, last: int) -> None:
        """One transaction for the lot (a bench shortcut; watchers are not running yet)."""
        conn = self.store._conn
        with self.store._lock, self.store._write(conn):
            for i in range(first, last + 1):
                key, _s, public, mac = lease_entry(i)
                self.store._put(conn, key, lease_value(public, mac), None)

    def put(self, i: int) -> None:
        key, _s, public, mac = lease_entry(i)
        self.store.put_raw(key, lease_value(public, mac))

    def delete(self, i: int) -> None:
        self.store.delete_key(lease_entry(i)[0])

    def close(self) -> None:
        self.store.close()


class EtcdCluster:
    def __init__(self, workdir: str):
        from etcd_server import EtcdServer
        from flannel_ext._stores.etcd_watch import b64
        self.b64 = b64
        for attempt in range(3):          # a free port can be taken before etcd binds it
            data = os.path.join(workdir, f"etcd{attempt}")
            os.makedirs(data)
            try:
                self.server = EtcdServer(data).start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self.url = f"etcd://127.0.0.1:{self.server.client_port}"
        from flannel_ext._stores.etcd import EtcdStore
        self.gateway = EtcdStore.from_url(self.url).gateway

    def _op(self, i: int) -> dict:
        key, _s, public, mac = lease_entry(i)
        return {"request_put": {"key": self.b64(PREFIX + key), "value": self.b64(lease_value(public, mac))}}

    def fill(self, first: int, last: int) -> None:
        ops = [self._op(i) for i in range(first, last + 1)]
        for start in range(0, len(ops), 100):          # etcd's default --max-txn-ops is 128
            self.gateway.call("/kv/txn", {"success": ops[start:start + 100]})

    def put(self, i: int) -> None:
        self.gateway.call("/kv/txn", {"success": [self._op(i)]})

    def delete(self, i: int) -> None:
        self.gateway.call("/kv/deleterange", {"key": self.b64(PREFIX + lease_entry(i)[0])})

    def close(self) -> None:
        self.server.stop()


STORES = {"sqlite": SqliteCluster, "etcd": EtcdCluster}


# --- the kernel entries a recipe makes, and the floor -------------------------------------
def floor_lines(recipe: str, first: int, last: int) -> tuple[list[str], list[str]]:
    """(`ip -batch` lines, `bridge -batch` lines) for the same entries the recipe programs."""
    ip_lines, fdb_lines = [], []
    for i in range(first, last + 1):
        _k, subnet, public, mac = lease_entry(i)
        sip = subnet.split("/")[0]
        if recipe == "host-gw":
            ip_lines.append(f"route replace {subnet} via {public} dev eth0")
        else:
            ip_lines.append(f"neigh replace {sip} dev {DEV} lladdr {mac} nud permanent")
            ip_lines.append(f"route replace {subnet} via {sip} dev {DEV} onlink")
            fdb_lines.append(f"fdb replace {mac} dev {DEV} self dst {public} permanent")
    return ip_lines, fdb_lines


def scratch_node(ns: str, recipe: str) -> None:
    """A namespace shaped like a node: eth0 on the underlay (a bridge: no dummy module
    here) and, for vxlan, flannel.1."""
    create_netns(ns)
    sh(["ip", "-n", ns, "link", "add", "eth0", "type", "bridge"])
    sh(["ip", "-n", ns, "addr", "add", f"{OWN_IP}/12", "dev", "eth0"])
    sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
    if recipe == "vxlan":
        sh(["ip", "-n", ns, "link", "add", DEV, "type", "vxlan", "id", "1", "dev", "eth0", "local", OWN_IP,
            "dstport", "8472", "nolearning"])
        sh(["ip", "-n", ns, "addr", "add", "10.0.0.0/32", "dev", DEV])
        sh(["ip", "-n", ns, "link", "set", DEV, "up"])


# One lease's kernel entries added then removed with flannel_ext.netlink, timed in-process:
# the per-event floor (what the kernel itself charges at N entries, no daemon around it).
_KERNEL_EVENT = '''
import ipaddress, json, sys, time
from flannel_ext import netlink
recipe, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
eth0, dev = netlink.ifindex("eth0"), netlink.ifindex("flannel.1")
times = {"add": [], "remove": []}
for i in range(first, first + count):
    a, b = (i >> 8) & 255, i & 255
    subnet = ipaddress.IPv4Network(f"10.{a}.{b}.0/24")
    public = str(ipaddress.IPv4Address("172.18.0.0") + i)
    mac = f"02:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:00:01"
    for op, kind in (("replace", "add"), ("del", "remove")):
        start = time.perf_counter()
        with netlink.Batch() as batch:
            if recipe == "host-gw":
                batch.route(op, i, subnet, gateway=public, oif=eth0)
            else:
                batch.neigh(op, i, dev, str(subnet.network_address), mac)
                batch.fdb(op, i, dev, mac, public)
                batch.route(op, i, subnet, gateway=str(subnet.network_address), oif=dev, onlink=True)
            failed = batch.commit()
        times[kind].append((time.perf_counter() - start) * 1000)
        assert not failed, failed
print(json.dumps(times))
'''


def kernel_event_floor(recipe: str, n: int, ns: str, events: int) -> dict[str, list[float]]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _KERNEL_EVENT, recipe, str(n + 1),
                          str(events)], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def cpu_of_children() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def floor(recipe: str, n: int, workdir: str, ns: str,
          events: int = 0) -> tuple[float, float, list[float], dict[str, list[float]]]:
    """(wall, CPU, per-batch wall) seconds to load the entries with iproute2 into a fresh
    node-like namespace, in the daemon's batches of 1,024 leases.

    The batch files are written first and `ip -n` enters the namespace itself: the measured
    processes do nothing but parse and send (no Python, no pipe, no `ip netns exec`)."""
    scratch_node(ns, recipe)
    try:
        runs = []
        for first in range(1, n + 1, BATCH):
            ip_lines, fdb_lines = floor_lines(recipe, first, min(n, first + BATCH - 1))
            batch = []
            for tool, lines in (("ip", ip_lines), ("bridge", fdb_lines)):
                if lines:
                    path = os.path.join(workdir, f"floor.{first}.{tool}")
                    Path(path).write_text("\n".join(lines) + "\n")
                    batch.append([tool, "-n", ns, "-batch", path])
            runs.append(batch)
        walls = []
        cpu0 = cpu_of_children()
        for batch in runs:
            start = time.perf_counter()
            for argv in batch:
                subprocess.run(argv, check=True)
            walls.append(time.perf_counter() - start)
        wall, cpu = sum(walls), cpu_of_children() - cpu0
        return wall, cpu, walls, kernel_event_floor(recipe, n, ns, events) if events else {}
    finally:
        delete_netns(ns)


def kernel_counts(recipe: str) -> tuple[int, ...]:
    """Entries the recipe owns in this (the node's) namespace: routes, [neighbours, FDB]."""
    def count(*argv: str) -> int:
        return len(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines())
    if recipe == "host-gw":
        return (count("ip", "route", "show", "proto", "boot", "dev", "eth0"),)
    return (count("ip", "route", "show", "dev", DEV), count("ip", "neigh", "show", "dev", DEV, "nud", "permanent"),
            count("bridge", "fdb", "show", "dev", DEV))


# --- the daemon -------------------------------------------------------------------------
class Daemon:
    """`flannel-ext run` in this namespace, logging JSON trace lines we read as they come."""

    def __init__(self, workdir: str, recipe: str, store_url: str):
        self.dir = Path(workdir) / "node"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "net-conf.json"
        conf.write_text(json.dumps({"Network": NETWORK, "SubnetLen": 24,
                                    "Backend": {"Type": "extension", "Hook": recipe}}))
        self.subnet_file = self.dir / "subnet.env"
        self.log_path = self.dir / "daemon.log"
        self.argv = [sys.executable, "-m", "flannel_ext", "run", "--net-conf", str(conf), "--store", store_url,
                     "--iface", "eth0", "--subnet-file", str(self.subnet_file), "--state-dir",
                     str(self.dir / "state"), "--node-name", "bench", "--log-format", "json",
                     "--release-lease-on-exit"]
        self._offset = 0
        self.traces: list[dict] = []

    def start(self) -> float:
        """Spawn; returns the spawn time (time.time())."""
        self.spawned = time.time()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=REPO)
        return self.spawned

    def read_traces(self) -> list[dict]:
        """New trace lines since the last call (also kept in self.traces)."""
        with open(self.log_path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        new = []
        for line in data[:end].splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if "hook" in doc:
                new.append(doc)
            elif doc.get("level") in ("error", "critical"):
                print("daemon:", doc.get("msg"), file=sys.stderr)
        self.traces += new
        return new

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode} waiting for {what}:\n"
                                   + self.log_path.read_text()[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.002)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def batch_size(trace: dict) -> int:
    subnet = trace.get("subnet") or ""
    return int(subnet.split()[0]) if subnet.endswith(" subnets") else 1


@dataclass
class Result:
    store: str
    recipe: str
    n: int
    startup: float = 0.0
    join: float = 0.0
    join_cpu: float = 0.0
    floor: float = 0.0
    floor_cpu: float = 0.0
    floor_batches: list = field(default_factory=list)
    batches: list = field(default_factory=list)
    rss_idle_kb: int = 0
    add_ms: list = field(default_factory=list)
    remove_ms: list = field(default_factory=list)
    add_hook_ms: list = field(default_factory=list)      # the hook call's own share of add_ms
    remove_hook_ms: list = field(default_factory=list)
    kernel_add_ms: list = field(default_factory=list)    # the same entries with no daemon: the floor
    kernel_remove_ms: list = field(default_factory=list)


def run_one(store_name: str, recipe: str, n: int, events: int, workdir: str, floor_ns: str) -> Result:
    result = Result(store_name, recipe, n)
    result.floor, result.floor_cpu, result.floor_batches, kernel = floor(recipe, n, workdir, floor_ns, events)
    result.kernel_add_ms, result.kernel_remove_ms = kernel.get("add", []), kernel.get("remove", [])
    cluster = STORES[store_name](workdir)
    daemon = Daemon(workdir, recipe, cluster.url)
    try:
        cluster.fill(1, n)
        spawned = daemon.start()
        daemon.wait(daemon.subnet_file.exists, 60, "subnet.env")
        ready = daemon.subnet_file.stat().st_mtime
        cpu_ready = daemon.cpu_seconds()
        result.startup = ready - spawned
        added = [0]

        def joined() -> bool:
            for trace in daemon.read_traces():
                if trace["hook"] == "SubnetAddCommand":
                    if not trace["ok"]:
                        raise RuntimeError(f"SubnetAdd failed: {trace}")
                    added[0] += batch_size(trace)
                    result.batches.append((batch_size(trace), trace["duration"]))
            return added[0] >= n
        daemon.wait(joined, 60 + n / 100, f"{n} leases programmed")
        result.join_cpu = daemon.cpu_seconds() - cpu_ready
        last = [t for t in daemon.traces if t["hook"] == "SubnetAddCommand"][-1]
        result.join = last["ts"] - ready
        counts = kernel_counts(recipe)
        if set(counts) != {n}:
            raise RuntimeError(f"kernel holds {counts} entries, expected {n} each")
        time.sleep(1.0)
        result.rss_idle_kb = daemon.rss_kb()
        profiler = None
        if os.environ.get("BENCH_PROFILE"):   # BENCH_PROFILE=FILE: py-spy stacks of the steady state
            # --nonblocking: pausing the daemon 1000 times a second would be what we measure
            profiler = subprocess.Popen(["py-spy", "record", "--format", "raw", "--rate", "1000", "--nonblocking",
                                         "--pid", str(daemon.proc.pid), "-o", os.environ["BENCH_PROFILE"]],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        env = dict(line.split("=", 1) for line in daemon.subnet_file.read_text().splitlines() if "=" in line)
        own = str(ipaddress.ip_network(env["FLANNEL_SUBNET"], strict=False))
        for i in [i for i in range(n + 1, n + 2 + events) if lease_entry(i)[1] != own][:events]:
            for op, lat, hook_lat, hook in (("put", result.add_ms, result.add_hook_ms, "SubnetAddCommand"),
                                            ("delete", result.remove_ms, result.remove_hook_ms,
                                             "SubnetRemoveCommand")):
                key = lease_entry(i)[0]
                start = time.time()
                getattr(cluster, op)(i)

                def traced() -> dict | None:
                    return next((t for t in daemon.read_traces() if t["hook"] == hook and t["subnet"] == key), None)
                trace = daemon.wait(traced, 30, f"{hook} {key}")
                lat.append((trace["ts"] - start) * 1000)
                hook_lat.append(trace["duration"] * 1000)
                time.sleep(0.02)
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait()
    finally:
        daemon.stop()
        cluster.close()
    return result


def inner(args) -> None:
    results = []
    for store_name in args.stores.split(","):
        for recipe in args.recipes.split(","):
            for n in map(int, args.sizes.split(",")):
                with tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir:
                    # host-gw routes sit on eth0: give each run a clean node namespace table.
                    sh(["ip", "route", "flush", "proto", "boot"], check=False)
                    sh(["ip", "link", "del", DEV], check=False)
                    res = run_one(store_name, recipe, n, args.events, workdir, args.floor_ns)
                    results.append(res)
                    print(f"# {store_name} {recipe} N={n}: start-up {res.startup:.2f}s, join {res.join:.3f}s "
                          f"(cpu {res.join_cpu:.2f}s), floor {res.floor:.3f}s (cpu {res.floor_cpu:.2f}s), "
                          f"RSS {res.rss_idle_kb / 1024:.1f} MB", flush=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))


def report(results: list[Result]) -> None:
    print(f"\nJoin, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| store | recipe | N | start-up s | join s | floor s | × floor | join CPU s | floor CPU s | "
          "first / last batch ms | floor first / last ms | RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        full = [d for size, d in r.batches if size >= BATCH // 2]
        spread = f"{full[0] * 1e3:.0f} / {full[-1] * 1e3:.0f}" if len(full) > 1 else "-"
        fb = r.floor_batches
        floor_spread = f"{fb[0] * 1e3:.0f} / {fb[-1] * 1e3:.0f}" if len(fb) > 1 else "-"
        print(f"| {r.store} | {r.recipe} | {r.n} | {r.startup:.2f} | {r.join:.3f} | {r.floor:.3f} | "
              f"{r.join / r.floor:.1f} | {r.join_cpu:.2f} | {r.floor_cpu:.2f} | {spread} | {floor_spread} | "
              f"{r.rss_idle_kb / 1024:.1f} |")
    print("\nOne lease added / removed in a running cluster of N (store write → trace line)\n")
    print("| store | recipe | N | add p50 ms | add p99 ms | remove p50 ms | remove p99 ms | "
          "hook share of add / remove p50 ms | kernel floor add / remove p50 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if r.add_ms:
            print(f"| {r.store} | {r.recipe} | {r.n} | {pct(r.add_ms, 50):.1f} | {pct(r.add_ms, 99):.1f} | "
                  f"{pct(r.remove_ms, 50):.1f} | {pct(r.remove_ms, 99):.1f} | "
                  f"{pct(r.add_hook_ms, 50):.2f} / {pct(r.remove_hook_ms, 50):.2f} | "
                  f"{pct(r.kernel_add_ms, 50):.2f} / {pct(r.kernel_remove_ms, 50):.2f} |")


def outer(args) -> int:
    prefix = f"bsc{os.getpid() % 100000}-"
    net = Underlay(prefix, cidr=UNDERLAY)
    try:
        net.create()
        node = prefix + "n0"
        net.add_node(node, 0)
        argv = ["ip", "netns", "exec", node, sys.executable, __file__, "--inner", "--sizes", args.sizes,
                "--stores", args.stores, "--recipes", args.recipes, "--events", str(args.events),
                "--floor-ns", prefix + "floor"]
        if args.json:
            argv += ["--json", os.path.abspath(args.json)]
        return subprocess.run(argv, cwd=REPO).returncode
    finally:
        delete_netns(prefix + "floor")
        net.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--stores", default="sqlite,etcd")
    parser.add_argument("--recipes", default="host-gw,vxlan")
    parser.add_argument("--events", type=int, default=30, help="steady-state adds and removes per run")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor-ns", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
