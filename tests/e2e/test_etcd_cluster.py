"""Three nodes on a real etcd (Debian's etcd-server) with the shipped
recipes; the keys and values read back with etcdctl are flannel's; etcd restarts mid-run."""
from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from etcd_server import EtcdServer
from flannel_ext.testing import NodeDaemon, routes, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def etcd_on_underlay(underlay, tmp_path):
    """etcd inside the hub namespace, on an underlay address the nodes can reach."""
    host = str(underlay.network.network_address + 250)
    subprocess.run(["ip", "-n", underlay.hub, "addr", "replace", f"{host}/24", "dev", "br0"], check=True)
    (tmp_path / "etcd").mkdir()
    server = EtcdServer(str(tmp_path / "etcd"), netns=underlay.hub, host=host).start()
    yield server
    server.stop()


def start_cluster(underlay, prefix, conf, etcd, tmp_path, daemons, count=3):
    nodes = []
    for i in range(count):
        ns = f"{prefix}n{i}"
        underlay.add_node(ns, i)
        node = NodeDaemon(ns, conf, "etcd://" + etcd.endpoint.split("://")[1], tmp_path)
        daemons.append(node)
        nodes.append(node.start(wait=False))
    for node in nodes:
        node.wait_ready(30)
    return nodes


def etcd_leases(etcd) -> dict[str, str]:
    out = etcd.etcdctl("get", "--prefix", "/coreos.com/network/subnets/").splitlines()
    return dict(zip(out[0::2], out[1::2], strict=True))


def has_route(ns, dst):
    return any(r.get("dst") == dst for r in routes(ns))


@pytest.mark.parametrize("recipe", ["host-gw.json", "vxlan.json"])
def test_three_nodes_on_etcd(underlay, netns_prefix, etcd_on_underlay, tmp_path, daemons, recipe):
    etcd = etcd_on_underlay
    nodes = start_cluster(underlay, netns_prefix, ROOT / "recipes" / recipe, etcd, tmp_path, daemons)
    for a in nodes:
        for b in nodes:
            if a is not b:
                wait_for(lambda: has_route(a.ns, b.subnet), timeout=20)
    leases = etcd_leases(etcd)
    assert sorted(leases) == sorted(f"/coreos.com/network/subnets/{n.subnet.replace('/', '-')}" for n in nodes)
    for node in nodes:
        value = leases[f"/coreos.com/network/subnets/{node.subnet.replace('/', '-')}"]
        ip = underlay.nodes[node.ns]
        if recipe == "host-gw.json":
            assert value == '{"PublicIP":"%s","PublicIPv6":null,"BackendType":"extension"}' % ip
        else:
            link = json.loads(subprocess.run(["ip", "-n", node.ns, "-j", "link", "show", "flannel.1"],
                                             capture_output=True, text=True, check=True).stdout)[0]
            assert value == ('{"PublicIP":"%s","PublicIPv6":null,"BackendType":"extension",'
                             '"BackendData":"%s"}' % (ip, link["address"]))
    # Each key is attached to an etcd lease with flannel's 24 h TTL.
    lease_ids = json.loads(etcd.etcdctl("get", "--prefix", "/coreos.com/network/subnets/", "-w", "json"))
    ids = {kv["lease"] for kv in lease_ids["kvs"]}
    assert len(ids) == 3 and 0 not in ids


def test_etcd_restart_mid_run(underlay, netns_prefix, etcd_on_underlay, tmp_path, daemons):
    etcd = etcd_on_underlay
    nodes = start_cluster(underlay, netns_prefix, ROOT / "recipes" / "host-gw.json", etcd, tmp_path, daemons)
    wait_for(lambda: all(has_route(nodes[0].ns, n.subnet) for n in nodes[1:]), timeout=20)
    etcd.stop()
    etcd.start()
    ip = str(underlay.network.network_address + 77)
    taken = {n.subnet for n in nodes}  # a subnet no node holds
    joined = next(f"10.244.{i}.0/24" for i in range(222, 256) if f"10.244.{i}.0/24" not in taken)
    etcd.etcdctl("put", "/coreos.com/network/subnets/" + joined.replace("/", "-"),
                 '{"PublicIP":"%s","PublicIPv6":null,"BackendType":"extension"}' % ip)
    for node in nodes:
        wait_for(lambda: has_route(node.ns, joined), timeout=30)
    assert all(node.proc.poll() is None for node in nodes)
