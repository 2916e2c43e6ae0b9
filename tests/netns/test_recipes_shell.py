"""The shell recipes recipes/host-gw.json and recipes/vxlan.json, run by the runtime's ShellHook
inside node namespaces: same kernel state as the Python recipes, idempotent, data crosses.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.netns.test_recipes_python import (Cluster, kernel_state, run_hook, subnet_of, tcp_crosses,
                                             vxlan_up)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
HOSTGW, VXLAN = str(RECIPES / "host-gw.json"), str(RECIPES / "vxlan.json")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


@pytest.fixture
def cluster(underlay, netns_prefix):
    return Cluster(underlay, netns_prefix)


def normalised(cluster, macs: dict) -> dict:
    """Every node's kernel state, with each VTEP MAC replaced by its owner's name."""
    names = {mac: f"<mac of {ns[-2:]}>" for ns, mac in macs.items()}
    text = json.dumps({ns[-2:]: kernel_state(ns) for ns in cluster.nodes}, sort_keys=True)
    return json.loads(_MAC.sub(lambda m: names.get(m.group(0), m.group(0)), text))


def everything_down(cluster, macs: dict, **plan) -> None:
    for ns in cluster.nodes:
        res = run_hook(ns, {**plan, "ctx": cluster.ctx(ns),
                            "steps": [["subnet_remove_batch", cluster.remotes(ns, macs or None)], ["shutdown"]]})
        assert res == [{"ok": None}, {"ok": None}], res


def hostgw_up(cluster, **plan) -> None:
    for ns in cluster.nodes:
        res = run_hook(ns, {**plan, "ctx": cluster.ctx(ns), "steps": [["subnet_add_batch", cluster.remotes(ns)]]})
        assert res == [{"ok": None}], res


def test_hostgw_shell_and_python_leave_the_same_state(cluster):
    n1, n2, n3 = cluster.nodes
    hostgw_up(cluster, net_conf=HOSTGW)
    shell = normalised(cluster, {})
    assert tcp_crosses(n2, "10.50.2.1", n3, "10.50.3.1") == "hello from 10.50.2.1"
    everything_down(cluster, {}, net_conf=HOSTGW)
    assert subnet_of(2) not in {r["dst"] for r in kernel_state(n1)["routes"]}
    hostgw_up(cluster, hook="host-gw")
    assert normalised(cluster, {}) == shell
    route = next(r for r in shell["n1"]["routes"] if r["dst"] == subnet_of(2))
    assert (route["gateway"], route["dev"], route["protocol"]) == ("192.168.77.3", "eth0", "boot")


def test_hostgw_shell_is_idempotent(cluster):
    n1 = next(iter(cluster.nodes))
    hostgw_up(cluster, net_conf=HOSTGW)
    before = kernel_state(n1)
    remotes = cluster.remotes(n1)
    res = run_hook(n1, {"net_conf": HOSTGW, "ctx": cluster.ctx(n1),
                        "steps": [["subnet_add_batch", remotes], ["subnet_add", remotes[0]]]})
    assert res == [{"ok": None}] * 2 and kernel_state(n1) == before
    res = run_hook(n1, {"net_conf": HOSTGW, "ctx": cluster.ctx(n1),
                        "steps": [["subnet_remove", remotes[0]], ["subnet_remove", remotes[0]]]})
    assert res == [{"ok": None}] * 2       # removing a route that is gone is fine


def test_vxlan_shell_and_python_leave_the_same_state(cluster):
    n1, n2, n3 = cluster.nodes
    macs = vxlan_up(cluster, net_conf=VXLAN)
    shell = normalised(cluster, macs)
    assert shell["n1"]["links"] == {"flannel.1": {"mtu": 1450, "up": True, "id": 1, "local": "192.168.77.2",
                                                  "link": "eth0", "port": 8472, "learning": False}}
    assert tcp_crosses(n1, "10.50.1.1", n3, "10.50.3.1") == "hello from 10.50.1.1"
    everything_down(cluster, macs, net_conf=VXLAN)
    assert kernel_state(n1)["links"] == {} and kernel_state(n1)["fdb"] == []
    macs = vxlan_up(cluster, hook="vxlan")
    assert normalised(cluster, macs) == shell


def test_vxlan_shell_is_idempotent_and_keeps_its_mac(cluster):
    macs = vxlan_up(cluster, net_conf=VXLAN)
    n1 = next(iter(cluster.nodes))
    before = kernel_state(n1)
    remotes = cluster.remotes(n1, macs)
    res = run_hook(n1, {"net_conf": VXLAN, "ctx": cluster.ctx(n1),
                        "steps": [["pre_startup"], ["post_startup"], ["subnet_add_batch", remotes],
                                  ["subnet_add", remotes[0]]]})
    assert res[0] == {"ok": macs[n1]} and res[1:] == [{"ok": None}] * 3
    assert kernel_state(n1) == before
    # A removal deletes all three entries of that node, and a second removal is fine.
    res = run_hook(n1, {"net_conf": VXLAN, "ctx": cluster.ctx(n1),
                        "steps": [["subnet_remove", remotes[0]], ["subnet_remove", remotes[0]]]})
    assert res == [{"ok": None}] * 2
    state = kernel_state(n1)
    assert len(state["neigh"]) == len(state["fdb"]) == 1
    assert remotes[0]["subnet"] not in {r["dst"] for r in state["routes"]}


def test_vxlan_shell_refuses_data_that_is_not_a_mac(cluster):
    vxlan_up(cluster, net_conf=VXLAN)
    n1 = next(iter(cluster.nodes))
    before = kernel_state(n1)
    evil = {"subnet": "10.50.9.0/24", "public_ip": "192.168.77.9", "backend_data": "$(touch /tmp/x); aa"}
    res = run_hook(n1, {"net_conf": VXLAN, "ctx": cluster.ctx(n1), "steps": [["subnet_add", evil]]})
    assert res[0]["error"] == "CommandError" and "not a VTEP MAC" in res[0]["message"]
    assert kernel_state(n1) == before


def test_vxlan_shell_recreates_a_mismatched_device(cluster):
    import subprocess
    n1 = next(iter(cluster.nodes))
    subprocess.run(["ip", "-n", n1, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0",
                    "dstport", "4789"], check=True)
    res = run_hook(n1, {"net_conf": VXLAN, "ctx": cluster.ctx(n1), "steps": [["pre_startup"], ["post_startup"]]})
    assert res[1] == {"ok": None}
    link = kernel_state(n1)["links"]["flannel.1"]
    assert (link["port"], link["learning"], link["mtu"], link["local"]) == (8472, False, 1450, "192.168.77.2")
