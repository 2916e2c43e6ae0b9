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


NETWORK6, SUBNET6 = "fd00:10:244::/56", "fd00:10:244:1::/64"
SERVER6 = SERVER.replace("socket.socket()", "socket.socket(socket.AF_INET6)").replace(
    '("0.0.0.0", 8080)', '("::", 8086)')
CLIENT6 = CLIENT.replace("8080", "8086")


def add_ipv6(topo) -> None:
    """IPv6 beside IPv4: pod fd00:10:244:1::2, remote pod fd00:10:244:2::5, out 2001:db8:50::2."""
    for ns, ifname, ip in ((topo.node, "vpod", "fd00:10:244:1::1/64"), (topo.pod, "eth0", "fd00:10:244:1::2/64"),
                           (topo.node, "vremote", "fd00:10:244:2::1/64"),
                           (topo.remote, "eth0", "fd00:10:244:2::5/64"),
                           (topo.node, "eth0", "2001:db8:50::1/64"), (topo.out, "eth0", "2001:db8:50::2/64")):
        sh(["ip", "-n", ns, "-6", "addr", "add", ip, "dev", ifname, "nodad"])
    sh(["ip", "-n", topo.pod, "-6", "route", "add", "default", "via", "fd00:10:244:1::1"])
    sh(["ip", "-n", topo.remote, "-6", "route", "add", "default", "via", "fd00:10:244:2::1"])
    sh(in_ns(topo.node, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]))


def source_seen6(topo, server: subprocess.Popen, ip: str) -> str | None:
    proc = sh(in_ns(topo.pod, [sys.executable, "-c", CLIENT6, ip]), check=False)
    return server.stdout.readline().strip() if proc.returncode == 0 else None


def ruleset_tables(ns: str) -> dict[tuple[str, str], list[dict]]:
    """`nft -j list ruleset`: the rules of each (family, table)."""
    items = json.loads(sh(in_ns(ns, ["nft", "-j", "list", "ruleset"])).stdout)["nftables"]
    tables: dict[tuple[str, str], list[dict]] = {}
    for item in items:
        if "table" in item:
            tables.setdefault((item["table"]["family"], item["table"]["name"]), [])
        if "rule" in item:
            tables[(item["rule"]["family"], item["rule"]["table"])].append(item["rule"])
    return tables


def test_ipv6_pod_traffic_is_masqueraded_when_enabled(topo):
    add_ipv6(topo)
    servers = []
    for ns in (topo.out, topo.remote):
        proc = subprocess.Popen(in_ns(ns, [sys.executable, "-c", SERVER6]), stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        servers.append(proc)
    out, remote = servers
    try:
        assert source_seen6(topo, out, "2001:db8:50::2") is None     # no route back to the pods
        setup_ip_masq(NETWORK, SUBNET, ipv6_network=NETWORK6, ipv6_subnet=SUBNET6, netns=topo.node)
        assert source_seen6(topo, out, "2001:db8:50::2") == "2001:db8:50::1"
        assert source_seen6(topo, remote, "fd00:10:244:2::5") == "fd00:10:244:1::2"
        tables = ruleset_tables(topo.node)
        assert set(tables) == {("ip", TABLE), ("ip6", TABLE)}
        v6 = json.dumps(tables[("ip6", TABLE)])
        assert len(tables[("ip6", TABLE)]) == 8 and "ff00::" in v6 and '"masquerade"' in v6
        assert "fd00:10:244::" in v6 and "fd00:10:244:1::" in v6 and "10.244." not in v6

        # IPv6 turned off again: its table goes, IPv4's stays
        setup_ip_masq(NETWORK, SUBNET, netns=topo.node)
        assert set(ruleset_tables(topo.node)) == {("ip", TABLE)}
        assert source_seen6(topo, out, "2001:db8:50::2") is None
        # IPv6 only
        setup_ip_masq(None, None, ipv6_network=NETWORK6, ipv6_subnet=SUBNET6, netns=topo.node)
        assert set(ruleset_tables(topo.node)) == {("ip6", TABLE)}
        teardown_ip_masq(netns=topo.node)
        assert ruleset_tables(topo.node) == {}
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def test_ipv6_cidrs_are_checked():
    with pytest.raises(ConfigError, match="IPv6Network: must be an IPv6 CIDR"):
        ruleset(NETWORK, SUBNET, ipv6_network="10.0.0.0/8", ipv6_subnet=SUBNET6)
    with pytest.raises(ConfigError, match="no network to masquerade"):
        ruleset(None, None)
