"""Issue 11 §1 with real daemons: no lease can stop a node, on SQLite, etcd and the kube API.

The entries that crashed or crash-looped a node (a lone surrogate, 100,000-deep nesting,
a BLOB or non-UTF-8 key, NaN, a huge value...) are in the store before the node starts
and more arrive while it runs. The node starts, counts each one as a rejection, programs
the healthy node added afterwards (a host-gw route in the kernel), survives a restart,
and a key that is the real key plus a newline can neither forge a log line nor, when
deleted, remove the real lease's route. On the kube store the Kubernetes fake runs in the
hub namespace (where node namespaces reach it) and Node objects carry the same values.
"""
from __future__ import annotations

import base64
import pathlib
import json
import sqlite3
import subprocess
import sys

import pytest

from etcd_server import EtcdServer
from examples import FLANNEL_EXAMPLES
from flannel_ext.testing import NodeDaemon, routes, wait_for

FORGED = "12:00:00.000 I flannel_ext.runtime: FORGED"


def value(public_ip="192.168.77.9", extra=""):
    return f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"extension"{extra}}}'


def critical(marker) -> list[tuple[str | bytes, str | bytes]]:
    """What took a node down before (issue 11), and a few more; all in Network 10.50/16."""
    return [
        ("10.50.201.0-24", value(extra=',"BackendData":"\\ud800"')),
        ("10.50.202.0-24", value(extra=',"BackendData":' + "[" * 100_000 + "]" * 100_000)),
        (b"10.50.203.0-24\xff", value()),
        ("10.50.204.0-24", value(extra=',"BackendData":NaN')),
        ("10.50.205.0-24", value(extra=',"BackendData":"' + "x" * 100_000 + '"')),
        ("10.50.206.0-24", value(extra=f',"PublicIPv6":"fe80::1%$(touch {marker})"')),
        ("10.50.207.0-24&::-0", value()),
        ("10.50.208.0-24", value("10.50.9.9")),
        ("10.50.209.0-24", value(extra=',"publicip":"1.2.3.4%eth0"')),
        ("10.50.210.0-24", b'{"PublicIP":"\xff"}'),
    ]


class SqliteWriter:
    def __init__(self, path):
        self.path, self.url = path, f"sqlite:{path}"

    def put(self, key, val):
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("CREATE TABLE IF NOT EXISTS leases (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                     "expiration REAL, revision INTEGER NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS events (rev INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
                     "type TEXT NOT NULL, value TEXT, expiration REAL)")
        # Bytes are stored as BLOBs: a key or value no flannel would write.
        conn.execute("BEGIN IMMEDIATE")
        rev = conn.execute("INSERT INTO events (key, type, value) VALUES (?, 'put', ?)", (key, val)).lastrowid
        conn.execute("INSERT INTO leases VALUES (?, ?, NULL, ?) ON CONFLICT(key) DO UPDATE SET value = "
                     "excluded.value, revision = excluded.revision", (key, val, rev))
        conn.execute("COMMIT")
        conn.close()

    def delete(self, key):
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("DELETE FROM leases WHERE key = ? RETURNING value", (key,)).fetchone()
        conn.execute("INSERT INTO events (key, type, value) VALUES (?, 'delete', ?)", (key, row[0]))
        conn.execute("COMMIT")
        conn.close()


class EtcdWriter:
    """Raw puts through etcd's gateway, from inside the namespace etcd listens in."""

    SCRIPT = ("import base64,json,sys,urllib.request\n"
              "req=json.load(sys.stdin)\n"
              "urllib.request.urlopen(urllib.request.Request(req['url'],json.dumps(req['body']).encode(),"
              "{'Content-Type':'application/json'}),timeout=10).read()\n")

    def __init__(self, etcd):
        self.etcd, self.url = etcd, "etcd://" + etcd.endpoint.split("://")[1]

    def _call(self, path, key, body):
        raw = key if isinstance(key, bytes) else key.encode()
        body = {"key": base64.b64encode(b"/coreos.com/network/subnets/" + raw).decode(), **body}
        subprocess.run(["ip", "netns", "exec", self.etcd.netns, sys.executable, "-c", self.SCRIPT], check=True,
                       input=json.dumps({"url": f"{self.etcd.endpoint}/v3/{path}", "body": body}), text=True,
                       timeout=30)

    def put(self, key, val):
        raw = val if isinstance(val, bytes) else val.encode()
        self._call("kv/put", key, {"value": base64.b64encode(raw).decode()})

    def delete(self, key):
        self._call("kv/deleterange", key, {})


@pytest.fixture(params=["sqlite", "etcd"])
def writer(request, underlay, tmp_path):
    if request.param == "sqlite":
        yield SqliteWriter(tmp_path / "leases.db")
        return
    host = str(underlay.network.network_address + 250)
    subprocess.run(["ip", "-n", underlay.hub, "addr", "replace", f"{host}/24", "dev", "br0"], check=True)
    (tmp_path / "etcd").mkdir()
    server = EtcdServer(str(tmp_path / "etcd"), netns=underlay.hub, host=host).start()
    yield EtcdWriter(server)
    server.stop()


@pytest.fixture
def conf(tmp_path):
    doc = json.loads((FLANNEL_EXAMPLES / "extension-hostgw.json").read_text())
    doc.update(SubnetMin="10.50.100.0", SubnetMax="10.50.150.0")   # daemons never take a corpus key
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps(doc))
    return path


def rejected(node) -> int:
    return sum(node.stats().get("rejected", {}).values())


def route_to(ns, subnet):
    return [r for r in routes(ns) if r.get("dst") == subnet]


@pytest.mark.timeout(240)
def test_no_lease_stops_a_node(writer, underlay, netns_prefix, conf, tmp_path, daemons):
    marker = tmp_path / "PWNED"
    entries = critical(marker)
    for key, val in entries[:6]:   # already there when the node starts (the crash loop)
        writer.put(key, val)
    ns_a, ns_b = f"{netns_prefix}a", f"{netns_prefix}b"
    underlay.add_node(ns_a, 0)
    underlay.add_node(ns_b, 1)
    a = NodeDaemon(ns_a, conf, writer.url, tmp_path)
    daemons.append(a)
    a.start(timeout=30)
    for key, val in entries[6:]:   # and while it runs
        writer.put(key, val)
    wait_for(lambda: rejected(a) >= len(entries), timeout=30, what="every bad entry counted")

    b = NodeDaemon(ns_b, conf, writer.url, tmp_path)   # a healthy node added afterwards
    daemons.append(b)
    b.start(timeout=30)
    wait_for(lambda: route_to(ns_a, b.subnet), timeout=30, what="A's route to B")
    assert route_to(ns_a, b.subnet)[0]["gateway"] == underlay.nodes[ns_b]
    assert rejected(a) == len(entries)

    # The real key plus a newline: rejected, and deleting it leaves the real lease alone.
    real_key = b.subnet.replace("/", "-")
    alias = f"{real_key}\n{FORGED}"
    b_value = value(underlay.nodes[ns_b])
    writer.put(alias, b_value)
    writer.delete(alias)
    writer.put("10.50.211.0-24", value(extra=',"BackendData":"\\udfff"'))   # a sync point after the delete
    wait_for(lambda: rejected(a) == len(entries) + 2, timeout=30, what="the alias and the sync point")
    assert route_to(ns_a, b.subnet), "deleting the alias key removed the real lease's route"
    assert a.proc.poll() is None and b.proc.poll() is None
    lines = a.log().splitlines()
    assert not any(line.startswith(FORGED) for line in lines)
    assert any("\\n" + FORGED in line for line in lines)

    # A restart lists every bad entry again: no crash loop, the route is still right.
    assert a.stop() == 0
    a.start(timeout=30)
    wait_for(lambda: rejected(a) >= len(entries) + 1, timeout=30)
    assert route_to(ns_a, b.subnet)
    assert a.proc.poll() is None
    assert not marker.exists()


# --- the kube store: the fake API server in the hub namespace, a real daemon in a node ---

FAKE_IN_HUB = """
import json, sys, http.server
sys.path.insert(0, sys.argv[1])
import kube_fake
host = sys.argv[2]
kube_fake.ThreadingHTTPServer = lambda addr, handler: http.server.ThreadingHTTPServer((host, 0), handler)
fake = kube_fake.FakeKubeAPI(__import__("pathlib").Path(sys.argv[3]))
fake.kubeconfig_path.write_text(fake.kubeconfig_path.read_text().replace("127.0.0.1", host))
print(fake.kubeconfig_path, flush=True)
for line in sys.stdin:            # one node per line: {"name", "cidr", "annotations"}
    node = json.loads(line)
    fake.add_node(node["name"], node["cidr"], annotations=node.get("annotations"))
    print("added", json.dumps(node["name"]), flush=True)
fake.close()
"""
P = "flannel.alpha.coreos.com/"


def kube_node(name, cidr, public_ip="192.168.77.9", data="null", **more):
    return {"name": name, "cidr": cidr, "annotations": {
        P + "kube-subnet-manager": "true", P + "backend-type": "extension", P + "public-ip": public_ip,
        P + "backend-data": data, **more}}


@pytest.mark.timeout(180)
def test_no_node_object_stops_a_kube_node(underlay, netns_prefix, conf, tmp_path, daemons):
    host = str(underlay.network.network_address + 250)
    subprocess.run(["ip", "-n", underlay.hub, "addr", "replace", f"{host}/24", "dev", "br0"], check=True)
    tests_dir = str(pathlib.Path(__file__).resolve().parents[1])
    fake = subprocess.Popen(["ip", "netns", "exec", underlay.hub, sys.executable, "-c", FAKE_IN_HUB, tests_dir, host,
                             str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        kubeconfig = fake.stdout.readline().strip()

        def add(node):
            fake.stdin.write(json.dumps(node) + "\n")
            fake.stdin.flush()
            assert fake.stdout.readline().strip() == f"added {json.dumps(node['name'])}"

        marker = tmp_path / "PWNED"
        hostile = [
            kube_node("deep", "10.50.201.0/24", data="[" * 100_000 + "]" * 100_000),
            kube_node("surrogate", "10.50.202.0/24", data='"\\ud800"'),
            kube_node("nan", "10.50.203.0/24", data="NaN"),
            kube_node("zone", "10.50.204.0/24", public_ip=f"fe80::1%$(touch {marker})"),
            kube_node("in-pods", "10.50.205.0/24", public_ip="10.50.9.9"),
            kube_node("bad\ncidr", "10.50.206.0/24\n"),
        ]
        ns_a, ns_b = f"{netns_prefix}a", f"{netns_prefix}b"
        underlay.add_node(ns_a, 0)
        underlay.add_node(ns_b, 1)
        add({"name": ns_a, "cidr": "10.50.100.0/24"})
        for node in hostile[:3]:   # before the node starts (the crash loop)
            add(node)
        a = NodeDaemon(ns_a, conf, "kube", tmp_path, env={"NODE_NAME": ns_a},
                       extra=["--kubeconfig-file", kubeconfig])
        daemons.append(a)
        a.start(timeout=30)
        for node in hostile[3:]:   # and while it runs
            add(node)
        wait_for(lambda: rejected(a) >= len(hostile), timeout=30, what="every bad node counted")
        add(kube_node(ns_b, "10.50.101.0/24", public_ip=underlay.nodes[ns_b]))   # a healthy node afterwards
        wait_for(lambda: route_to(ns_a, "10.50.101.0/24"), timeout=30, what="A's route to the healthy node")
        assert route_to(ns_a, "10.50.101.0/24")[0]["gateway"] == underlay.nodes[ns_b]
        assert rejected(a) == len(hostile)
        assert a.proc.poll() is None and not marker.exists()
        assert not any(line.startswith("cidr") for line in a.log().splitlines())
    finally:
        for daemon in daemons:   # before the API server goes, so they do not log its absence
            daemon.stop()
        fake.stdin.close()
        try:
            fake.wait(10)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait()
        fake.stdout.close()
