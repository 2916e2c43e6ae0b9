"""The nftables policy hook against real packets.

One node namespace with a `cni0` bridge and three pods on it (bridged traffic, seen by the
forward hook through br_netfilter), plus a pod behind a routed veth (as traffic from another
node arrives). Servers answer TCP and UDP; every expectation is a real connection attempt.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flannel_ext._policy.compute import Cluster, compute_state
from flannel_ext._policy.nftables import NftablesPolicy
from flannel_ext._util.netns import create_netns, sh

SERVER = """
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(data, peer)
for p in (80, 81):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
threading.Thread(target=udp, args=(53,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

PROBE = """
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM)
s.settimeout(0.5)
try:
    if proto == "TCP":
        s.connect((ip, port)); ok = s.recv(2) == b"ok"
    else:
        s.sendto(b"hi", (ip, port)); ok = s.recvfrom(10)[0] == b"hi"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"""

NODE_IP = "10.244.1.1"
PODS = {  # name: (ip, labels); "r" is routed (another node's pod), the rest are bridged
    "a": ("10.244.1.2", {"role": "db"}),
    "b": ("10.244.1.3", {"role": "frontend"}),
    "c": ("10.244.1.4", {"role": "other"}),
    "r": ("10.244.2.2", {"role": "frontend"}),
}


@pytest.fixture
def node(netns_prefix):
    """(node namespace, {pod: namespace}); servers run in every pod."""
    ns = create_netns(f"{netns_prefix}node")
    sh(["ip", "-n", ns, "link", "add", "cni0", "type", "bridge"])
    sh(["ip", "-n", ns, "addr", "add", f"{NODE_IP}/24", "dev", "cni0"])
    sh(["ip", "-n", ns, "link", "set", "cni0", "up"])
    sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    pods, servers = {}, []
    for i, (name, (ip, _)) in enumerate(PODS.items()):
        pod = create_netns(f"{netns_prefix}{name}")
        sh(["ip", "-n", ns, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", pod])
        if name == "r":   # routed: its own link and subnet, like a remote node's pod
            sh(["ip", "-n", ns, "addr", "add", "10.244.2.1/24", "dev", f"v{i}"])
            gateway = "10.244.2.1"
        else:
            sh(["ip", "-n", ns, "link", "set", f"v{i}", "master", "cni0"])
            gateway = NODE_IP
        sh(["ip", "-n", ns, "link", "set", f"v{i}", "up"])
        sh(["ip", "-n", pod, "addr", "add", f"{ip}/24", "dev", "eth0"])
        sh(["ip", "-n", pod, "link", "set", "eth0", "up"])
        sh(["ip", "-n", pod, "route", "add", "default", "via", gateway])
        proc = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", SERVER],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        servers.append(proc)
        pods[name] = pod
    yield ns, pods
    for proc in servers:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def reach(ns: str, dst: str, port: int, proto: str = "TCP") -> bool:
    ip = PODS[dst][0]
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, proto, ip, str(port)],
                          timeout=10, check=False).returncode == 0


def cluster(policies, labels=None, generation=1) -> Cluster:
    labels = labels or {}
    pods = [{"metadata": {"name": n, "namespace": "x", "labels": labels.get(n, lbl)},
             "spec": {"nodeName": "r-node" if n == "r" else "n1",
                      "containers": [{"ports": [{"containerPort": 80, "name": "http"},
                                                {"containerPort": 53, "name": "dns", "protocol": "UDP"}]}]},
             "status": {"podIP": ip}} for n, (ip, lbl) in PODS.items()]
    return Cluster.from_objects(generation, [{"metadata": {"name": "x"}}], pods, policies)


def policy(name, spec):
    return {"metadata": {"name": name, "namespace": "x"}, "spec": spec}


DB_FROM_FRONTEND = policy("db", {
    "podSelector": {"matchLabels": {"role": "db"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                 "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}]}]})
FRONTEND_EGRESS = policy("frontend-out", {
    "podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
    "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "db"}}}], "ports": [{"port": 80}]}]})


def table(ns: str) -> dict:
    """The policy table as nft JSON, without handles (which change on every replacement)."""
    out = sh(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "flannel-ext-policy"]).stdout
    return json.loads(out, object_hook=lambda d: {k: v for k, v in d.items() if k != "handle"})


def test_ingress_tcp_udp_bridged_and_routed(node):
    ns, pods = node
    hook = NftablesPolicy(netns=ns)
    hook.apply(compute_state(cluster([DB_FROM_FRONTEND]), "n1", [NODE_IP]))
    assert reach(pods["b"], "a", 80)                      # bridged, allowed
    assert reach(pods["r"], "a", 80)                      # routed, allowed
    assert not reach(pods["c"], "a", 80)                  # not a frontend
    assert not reach(pods["b"], "a", 81)                  # port not allowed
    assert reach(pods["b"], "a", 53, "UDP")
    assert not reach(pods["c"], "a", 53, "UDP")
    assert reach(ns, "a", 81)                             # the node itself: always allowed
    assert reach(pods["a"], "c", 80)                      # a is not egress-isolated; replies pass
    assert reach(pods["c"], "b", 81)                      # b is not selected at all


def test_egress_and_additive_union(node):
    ns, pods = node
    hook = NftablesPolicy(netns=ns)
    hook.apply(compute_state(cluster([DB_FROM_FRONTEND, FRONTEND_EGRESS]), "n1", [NODE_IP]))
    assert reach(pods["b"], "a", 80)                      # egress of b and ingress of a both allow
    assert not reach(pods["b"], "c", 80)                  # b's egress allows only db
    assert not reach(pods["b"], "a", 53, "UDP")           # egress allows only TCP 80
    assert reach(pods["c"], "b", 80)                      # b's ingress is not isolated


def test_restart_replaces_table_idempotently(node):
    ns, pods = node
    state = compute_state(cluster([DB_FROM_FRONTEND]), "n1", [NODE_IP])
    NftablesPolicy(netns=ns).apply(state)
    first = table(ns)
    again = NftablesPolicy(netns=ns)        # a restarted daemon: a new hook, same state
    again.apply(state)
    assert table(ns) == first
    tables = json.loads(sh(["ip", "netns", "exec", ns, "nft", "-j", "list", "tables"]).stdout)["nftables"]
    assert [t["table"]["name"] for t in tables if "table" in t] == ["flannel-ext-policy"]
    assert not reach(pods["c"], "a", 80) and reach(pods["b"], "a", 80)


def test_label_change_is_incremental(node):
    ns, pods = node
    hook = NftablesPolicy(netns=ns)
    old = compute_state(cluster([DB_FROM_FRONTEND]), "n1", [NODE_IP])
    hook.apply(old)
    assert not reach(pods["c"], "a", 80)
    new = compute_state(cluster([DB_FROM_FRONTEND], {"c": {"role": "frontend"}}, 2), "n1", [NODE_IP])
    hook.update(old, new)
    lines = hook.last_script.strip().splitlines()
    assert lines and all(line.startswith("add element inet flannel-ext-policy p-") for line in lines), lines
    assert reach(pods["c"], "a", 80)
    # and back: the db pod loses its label, so it is no longer isolated (map entry and chain go)
    newer = compute_state(cluster([DB_FROM_FRONTEND], {"a": {"role": "cache"}}, 3), "n1", [NODE_IP])
    hook.update(new, newer)
    assert "delete table" not in hook.last_script
    assert reach(pods["c"], "a", 81)
    assert not any("chain" in item and item["chain"]["name"].startswith("in-") for item in table(ns)["nftables"])


def test_clear_removes_enforcement(node):
    ns, pods = node
    hook = NftablesPolicy(netns=ns)
    hook.apply(compute_state(cluster([policy("deny", {"podSelector": {}})]), "n1", [NODE_IP]))
    assert not reach(pods["b"], "a", 80)
    hook.clear()
    assert reach(pods["b"], "a", 80)
    assert sh(["ip", "netns", "exec", ns, "nft", "list", "ruleset"]).stdout.strip() == ""


def test_daemon_enforces_the_file_source_and_keeps_it_across_a_restart(underlay, netns_prefix, tmp_path,
                                                                         daemons):
    from flannel_ext._util.files import write_atomic
    from flannel_ext.testing import NodeDaemon, wait_for
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    source = tmp_path / "policy" / "cluster.json"
    node = NodeDaemon(ns, "recipes/host-gw.json", f"sqlite:{tmp_path}/leases.db", tmp_path,
                      extra=["--policy", "nftables", "--policy-source", f"file:{source}"])
    daemons.append(node)
    node.start()
    status_file = node.state_dir / "policy-status.json"

    def generation():
        try:
            return json.loads(status_file.read_text())["generation"]
        except (OSError, ValueError, KeyError):
            return None
    doc = {"generation": 5, "namespaces": [{"metadata": {"name": "x"}}],
           "pods": [{"metadata": {"name": "a", "namespace": "x", "labels": {"role": "db"}},
                     "spec": {"nodeName": ns}, "status": {"podIP": "10.244.7.2"}}],
           "networkpolicies": [DB_FROM_FRONTEND]}
    write_atomic(str(source), json.dumps(doc))
    wait_for(lambda: generation() == 5, 20, what="generation 5 in policy-status.json")
    assert "libnftables not usable" not in node.log()   # in its own namespace: in-process
    before = table(ns)
    ingress = next(i["map"] for i in before["nftables"] if "map" in i and i["map"]["name"] == "ingress")
    assert ingress["elem"][0][0] == "10.244.7.2"
    assert node.stop() == 0
    assert table(ns) == before   # a stopped daemon leaves the rules enforcing: no open window
    status_file.unlink()
    node.start()
    wait_for(lambda: generation() == 5, 20, what="generation 5 again after the restart")
    assert table(ns) == before
