"""Two nodes run flannel's host-gw example verbatim."""
from __future__ import annotations

import shutil
import signal

import pytest

from examples import FLANNEL_EXAMPLES
from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import NodeDaemon, routes, wait_for



@pytest.fixture
def hostgw_conf(tmp_path):
    dst = tmp_path / "net-conf.json"
    shutil.copy(FLANNEL_EXAMPLES / "extension-hostgw.json", dst)  # verbatim
    return dst


def route_to(ns: str, subnet: str) -> list[dict]:
    return [r for r in routes(ns) if r.get("dst") == subnet]


def start_nodes(underlay, prefix, conf, store, tmp_path, daemons, count=2, extra=()):
    nodes = []
    for i in range(count):
        ns = f"{prefix}n{i}"
        underlay.add_node(ns, i)
        node = NodeDaemon(ns, conf, store, tmp_path, extra=extra)
        daemons.append(node)
        nodes.append(node)
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    return nodes


def test_two_nodes_route_each_other(underlay, netns_prefix, hostgw_conf, tmp_path, daemons):
    store = f"sqlite:{tmp_path}/leases.db"
    a, b = start_nodes(underlay, netns_prefix, hostgw_conf, store, tmp_path, daemons)
    ip_a, ip_b = underlay.nodes[a.ns], underlay.nodes[b.ns]
    wait_for(lambda: route_to(a.ns, b.subnet) and route_to(b.ns, a.subnet))
    assert route_to(a.ns, b.subnet)[0]["gateway"] == ip_b
    assert route_to(b.ns, a.subnet)[0]["gateway"] == ip_a
    # subnet.env holds exactly flannel's lines, in flannel's order.
    env_text = a.subnet_file.read_text()
    first = a.subnet.split("/")[0].rsplit(".", 1)[0] + ".1"
    assert env_text == (f"FLANNEL_NETWORK=10.50.0.0/16\nFLANNEL_SUBNET={first}/24\n"
                        "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")


def test_release_on_exit_removes_route(underlay, netns_prefix, hostgw_conf, tmp_path, daemons):
    store = f"sqlite:{tmp_path}/leases.db"
    a, b = start_nodes(underlay, netns_prefix, hostgw_conf, store, tmp_path, daemons,
                       extra=["--release-lease-on-exit"])
    wait_for(lambda: route_to(a.ns, b.subnet))
    assert b.stop() == 0
    wait_for(lambda: not route_to(a.ns, b.subnet))


def test_ttl_expiry_removes_route(underlay, netns_prefix, hostgw_conf, tmp_path, daemons):
    store = f"sqlite:{tmp_path}/leases.db"
    a, b = start_nodes(underlay, netns_prefix, hostgw_conf, store, tmp_path, daemons,
                       extra=["--subnet-lease-ttl", "3"])
    wait_for(lambda: route_to(a.ns, b.subnet))
    b.kill()  # no release, no renewal: the 3 s lease must expire on its own
    wait_for(lambda: not route_to(a.ns, b.subnet), timeout=15)
    assert route_to(b.ns, a.subnet), "a killed node's kernel state is left alone"


def test_restart_reconciles(underlay, netns_prefix, hostgw_conf, tmp_path, daemons):
    """kill -9, delete a lease, add another, restart: stale route gone, new one present."""
    store_path = tmp_path / "leases.db"
    a, b, c = start_nodes(underlay, netns_prefix, hostgw_conf, f"sqlite:{store_path}", tmp_path,
                          daemons, count=3)
    wait_for(lambda: route_to(a.ns, b.subnet) and route_to(a.ns, c.subnet))
    a.kill()
    b.kill()
    gone = b.subnet
    store = SqliteStore(str(store_path))
    try:
        lease = next(x for x in store.list().leases if str(x.subnet) == gone)
        store.release(lease)
        # A node that joined while `a` was down (its public IP is on the underlay).
        from flannel_ext._stores.lease import Lease, LeaseAttrs
        import ipaddress
        # a subnet none of the three nodes holds
        taken = {a.subnet, b.subnet, c.subnet}
        joined = next(f"10.50.{i}.0/24" for i in range(200, 256) if f"10.50.{i}.0/24" not in taken)
        new = Lease(ipaddress.IPv4Network(joined),
                    LeaseAttrs.with_string_data(underlay.nodes[c.ns], None))
        store.put_lease(new, ttl=3600)
    finally:
        store.close()
    a.start()
    wait_for(lambda: route_to(a.ns, joined) and not route_to(a.ns, gone))
    assert len(route_to(a.ns, c.subnet)) == 1
    dsts = [r.get("dst") for r in routes(a.ns)]
    assert len(dsts) == len(set(dsts)), f"duplicate routes: {dsts}"


def test_sigterm_runs_shutdown_command(underlay, netns_prefix, tmp_path, daemons):
    conf = tmp_path / "net-conf.json"
    marker = tmp_path / "shutdown-ran"
    conf.write_text('{"Network": "10.50.0.0/16", "Backend": {"Type": "extension", '
                    f'"ShutdownCommand": "echo \\"$SUBNET\\" > {marker}"}}}}')
    (a,) = start_nodes(underlay, netns_prefix, conf, f"sqlite:{tmp_path}/l.db", tmp_path, daemons, 1)
    a.signal(signal.SIGTERM)
    assert a.proc.wait(15) == 0
    assert marker.read_text().strip() == a.subnet
