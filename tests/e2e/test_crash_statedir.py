"""Issue 11 §2 and §4: one daemon per state dir, a state file that knows its kernel, and a
clean restart that heals what an earlier run could not remove."""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess

from examples import FLANNEL_EXAMPLES
from flannel_ext._stores.lease import Lease, LeaseAttrs
from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import NodeDaemon, routes, wait_for


def put_peer(store: SqliteStore, n: int) -> str:
    subnet = ipaddress.IPv4Network(f"10.50.{n}.0/24")
    store.put_lease(Lease(subnet, LeaseAttrs(public_ip=f"192.168.77.{100 + n}", backend_type="extension")))
    return str(subnet)


def has_route(ns: str, subnet: str) -> bool:
    return any(r.get("dst") == subnet for r in routes(ns))


def hostgw_conf(tmp_path, remove: str | None = None):
    conf = json.loads((FLANNEL_EXAMPLES / "extension-hostgw.json").read_text())
    if remove:
        conf["Backend"]["SubnetRemoveCommand"] = remove
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps(conf))
    return path


def test_second_daemon_on_a_state_dir_exits_naming_the_holder(underlay, netns_prefix, tmp_path, daemons):
    a_ns, b_ns = f"{netns_prefix}a", f"{netns_prefix}b"
    underlay.add_node(a_ns, 0)
    underlay.add_node(b_ns, 1)
    store = f"sqlite:{tmp_path}/leases.db"
    first = NodeDaemon(a_ns, hostgw_conf(tmp_path), store, tmp_path)
    daemons.append(first)
    first.start(timeout=60)
    before = (first.state_dir / "programmed.json").read_text()
    second = NodeDaemon(b_ns, first.net_conf, store, tmp_path / "second")
    second.state_dir = first.state_dir                      # the same --state-dir
    proc = subprocess.run(second.argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by flannel-ext pid {first.proc.pid}" in lines[0], proc.stderr
    assert str(first.state_dir) in lines[0] and "--state-dir" in lines[0]
    assert first.proc.poll() is None
    assert (first.state_dir / "programmed.json").read_text() == before
    assert not second.subnet_file.exists()                 # it stopped before taking a lease


def test_a_state_file_from_another_namespace_is_not_acted_on(underlay, netns_prefix, tmp_path, daemons):
    a_ns, b_ns = f"{netns_prefix}a", f"{netns_prefix}b"
    underlay.add_node(a_ns, 0)
    underlay.add_node(b_ns, 1)
    db = SqliteStore(tmp_path / "leases.db")
    node = NodeDaemon(a_ns, hostgw_conf(tmp_path), f"sqlite:{tmp_path}/leases.db", tmp_path)
    daemons.append(node)
    node.start(timeout=60)
    peer = put_peer(db, 20)
    wait_for(lambda: has_route(a_ns, peer), 60)
    assert node.stop() == 0
    db.delete_key(peer.replace("/", "-"))   # the record now asks for a remove...
    moved = NodeDaemon(b_ns, node.net_conf, node.store, tmp_path / "moved")
    moved.state_dir = node.state_dir         # ...but this state dir is from namespace a
    daemons.append(moved)
    moved.start(timeout=60)
    wait_for(lambda: "in another network namespace" in moved.log(), 60)
    assert moved.stop() == 0
    assert "hook=SubnetRemoveCommand" not in moved.log(), moved.log()
    assert has_route(a_ns, peer), "namespace a's kernel is not touched"


def test_a_clean_restart_heals_a_remove_that_gave_up(underlay, netns_prefix, tmp_path, daemons):
    ns = f"{netns_prefix}a"
    underlay.add_node(ns, 0)
    flag = tmp_path / "remove-fails"
    conf = hostgw_conf(tmp_path, f'[ ! -e {flag} ] && ip route del "$SUBNET" via "$PUBLIC_IP"')
    db = SqliteStore(tmp_path / "leases.db")
    node = NodeDaemon(ns, conf, f"sqlite:{tmp_path}/leases.db", tmp_path, extra=["--hook-retries", "2"])
    daemons.append(node)
    node.start(timeout=60)
    peer = put_peer(db, 21)
    wait_for(lambda: has_route(ns, peer), 60)
    flag.touch()
    db.delete_key(peer.replace("/", "-"))
    wait_for(lambda: "giving up on remove" in node.log(), 60)
    assert has_route(ns, peer)                # the damage: a stale route
    assert node.stop() == 0
    flag.unlink()
    node.start(timeout=60)                              # a clean restart on the same state dir
    wait_for(lambda: not has_route(ns, peer), 60, what="the stale route removed after the restart")
    assert node.stop() == 0
    shutil.copy(node.state_dir / "programmed.json", tmp_path / "after.json")
    assert json.loads((tmp_path / "after.json").read_text())["programmed"] == {}
