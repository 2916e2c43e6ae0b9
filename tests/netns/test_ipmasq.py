"""`--ip-masq` in namespaces: pod traffic leaving the cluster is masqueraded, traffic inside
it keeps its source, and the rules live only in the `ip flannel-ext` table.

    pod (10.244.1.2) ── node (10.244.1.1 | 10.244.2.1 | 192.168.50.1) ── out (192.168.50.2)
                                          └── remote (10.244.2.5: "another node's pod")

`out` has no route back to the cluster network, so a pod can reach it only when masqueraded.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flannel_ext._util.errors import ConfigError
from flannel_ext._util.netns import create_netns, in_ns, sh
from flannel_ext._runtime.ipmasq import TABLE, ruleset, setup_ip_masq, teardown_ip_masq

NETWORK, SUBNET = "10.244.0.0/16", "10.244.1.0/24"

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(8); s.settimeout(20)
print("ready", flush=True)
while True:
    c, peer = s.accept(); print(peer[0], flush=True); c.close()
"""
CLIENT = "import socket, sys; socket.create_connection((sys.argv[1], 8080), timeout=2).close()"


def _link(a: str, a_if: str, a_ip: str, b: str, b_if: str, b_ip: str) -> None:
    sh(["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b])
    for ns, ifname, ip in ((a, a_if, a_ip), (b, b_if, b_ip)):
        sh(["ip", "-n", ns, "addr", "add", ip, "dev", ifname])
        sh(["ip", "-n", ns, "link", "set", ifname, "up"])


class Topology:
    def __init__(self, prefix: str):
        self.pod, self.node, self.out, self.remote = (
            create_netns(prefix + n) for n in ("pod", "node", "out", "remote"))
        _link(self.node, "vpod", "10.244.1.1/24", self.pod, "eth0", "10.244.1.2/24")
        _link(self.node, "vremote", "10.244.2.1/24", self.remote, "eth0", "10.244.2.5/24")
        _link(self.node, "eth0", "192.168.50.1/24", self.out, "eth0", "192.168.50.2/24")
        sh(["ip", "-n", self.pod, "route", "add", "default", "via", "10.244.1.1"])
        sh(["ip", "-n", self.remote, "route", "add", "default", "via", "10.244.2.1"])
        sh(in_ns(self.node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        self.servers: dict[str, subprocess.Popen] = {}

    def serve(self, ns: str) -> None:
        proc = subprocess.Popen(in_ns(ns, [sys.executable, "-c", SERVER]), stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        self.servers[ns] = proc

    def source_seen(self, server_ns: str, server_ip: str) -> str | None:
        """Connect from the pod; the address the server saw, or None if it failed."""
        proc = sh(in_ns(self.pod, [sys.executable, "-c", CLIENT, server_ip]), check=False)
        if proc.returncode != 0:
            return None
        return self.servers[server_ns].stdout.readline().strip()

    def stop(self) -> None:
        for proc in self.servers.values():
            proc.kill()
            proc.wait()
            proc.stdout.close()


@pytest.fixture
def topo(netns_prefix):
    t = Topology(netns_prefix)
    yield t
    t.stop()


def nft_table(ns: str) -> dict | None:
    proc = sh(in_ns(ns, ["nft", "-j", "list", "table", "ip", TABLE]), check=False)
    if proc.returncode != 0:
        return None
    items = json.loads(proc.stdout)["nftables"]
    return {"chains": {i["chain"]["name"]: i["chain"] for i in items if "chain" in i},
            "rules": [i["rule"] for i in items if "rule" in i]}


def test_pod_traffic_leaving_the_network_is_masqueraded(topo):
    topo.serve(topo.out)
    topo.serve(topo.remote)
    # Without the rules the outside cannot answer a pod address; in-cluster works.
    assert topo.source_seen(topo.out, "192.168.50.2") is None
    assert topo.source_seen(topo.remote, "10.244.2.5") == "10.244.1.2"

    setup_ip_masq(NETWORK, SUBNET, netns=topo.node)
    assert topo.source_seen(topo.out, "192.168.50.2") == "192.168.50.1"
    assert topo.source_seen(topo.remote, "10.244.2.5") == "10.244.1.2"

    table = nft_table(topo.node)
    post, fwd = table["chains"]["postrouting"], table["chains"]["forward"]
    assert (post["type"], post["hook"], post["prio"]) == ("nat", "postrouting", 100)
    assert (fwd["type"], fwd["hook"]) == ("filter", "forward")
    text = json.dumps(table["rules"])
    assert '"fully-random"' in text and '"masquerade"' in text and str(0x4000) in text
    assert len([r for r in table["rules"] if r["chain"] == "postrouting"]) == 6
    assert len([r for r in table["rules"] if r["chain"] == "forward"]) == 2

    teardown_ip_masq(netns=topo.node)
    assert nft_table(topo.node) is None
    assert topo.source_seen(topo.out, "192.168.50.2") is None
    teardown_ip_masq(netns=topo.node)      # a missing table is fine


def test_setup_is_idempotent_and_replaces_the_table(topo):
    setup_ip_masq(NETWORK, SUBNET, netns=topo.node)
    setup_ip_masq(NETWORK, SUBNET, netns=topo.node)
    assert len(nft_table(topo.node)["rules"]) == 8
    setup_ip_masq("10.50.0.0/16", "10.50.3.0/24", fully_random=False, netns=topo.node)
    rules = nft_table(topo.node)["rules"]
    assert len(rules) == 8
    text = json.dumps(rules)
    assert "10.244." not in text and "10.50.3.0" in text and "fully-random" not in text
    # Only our table: the namespace's other tables are not ours to touch.
    sh(in_ns(topo.node, ["nft", "add", "table", "ip", "other"]))
    teardown_ip_masq(netns=topo.node)
    assert sh(in_ns(topo.node, ["nft", "list", "tables"])).stdout.split() == ["table", "ip", "other"]


def test_bad_cidrs_are_config_errors():
    with pytest.raises(ConfigError, match="IPv4 CIDR"):
        ruleset("fd00::/64", SUBNET)
    with pytest.raises(ConfigError, match="subnet"):
        ruleset(NETWORK, "nope")
    assert "10.244.0.0/16" in ruleset("10.244.3.7/16", "10.244.1.1/24")
