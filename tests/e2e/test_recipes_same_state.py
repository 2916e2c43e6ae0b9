"""End to end: for host-gw and vxlan, a 3-node cluster of `flannel-ext run`
daemons with the shell recipe and one with the Python recipe leave the same normalised
kernel state; TCP crosses between subnets; kill -9 and restart changes nothing.

Each form gets its own underlay (same addresses), so nothing is left over from the other.
Subnets are allocated at random, so states are compared with each node's subnet and VTEP
MAC replaced by the node's name.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from flannel_ext._util.netns import Underlay
from flannel_ext.testing import NodeDaemon, wait_for
from tests.netns.test_recipes_python import kernel_state, tcp_crosses

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NODES = 3


def start_cluster(prefix: str, conf: Path, tmp_path: Path, daemons: list) -> tuple[Underlay, list[NodeDaemon]]:
    underlay = Underlay(prefix).create()      # namespaces under the test's prefix: removed after
    store = f"sqlite:{tmp_path}/{prefix}leases.db"
    nodes = []
    for i in range(1, NODES + 1):
        ns = f"{prefix}n{i}"
        underlay.add_node(ns, i)
        node = NodeDaemon(ns, conf, store, tmp_path / prefix)
        daemons.append(node)
        nodes.append(node.start(wait=False))
    for node in nodes:
        node.wait_ready(30)
        first = node.subnet_env()["FLANNEL_SUBNET"]          # x.y.z.1/24: the pods' gateway
        for argv in (["link", "add", "cni0", "type", "bridge"], ["addr", "add", first, "dev", "cni0"],
                     ["link", "set", "cni0", "up"]):
            subprocess.run(["ip", "-n", node.ns, *argv], check=True)
    return underlay, nodes


def programmed(nodes: list[NodeDaemon], vxlan: bool) -> bool:
    for node in nodes:
        state = kernel_state(node.ns)
        dsts = {r["dst"] for r in state["routes"]}
        if not all(other.subnet in dsts for other in nodes if other is not node):
            return False
        if vxlan and (len(state["neigh"]) != NODES - 1 or len(state["fdb"]) != NODES - 1):
            return False
    return True


def normalised(nodes: list[NodeDaemon]) -> dict:
    names = {}
    for k, node in enumerate(nodes, 1):
        names[".".join(node.subnet.split(".")[:3]) + "."] = f"<subnet of n{k}>."
        link = kernel_state(node.ns)["links"]
        if "flannel.1" in link:
            mac = json.loads(subprocess.run(["ip", "-n", node.ns, "-j", "link", "show", "flannel.1"],
                                            capture_output=True, text=True).stdout)[0]["address"]
            names[mac] = f"<mac of n{k}>"
    text = json.dumps({f"n{k}": kernel_state(n.ns) for k, n in enumerate(nodes, 1)}, sort_keys=True)
    pattern = re.compile("|".join(re.escape(k) for k in sorted(names, key=len, reverse=True)))
    state = json.loads(pattern.sub(lambda m: names[m.group(0)], text))
    for node in state.values():        # re-sort: the placeholders change the order
        for key in ("routes", "neigh", "fdb"):
            node[key].sort(key=lambda d: json.dumps(d, sort_keys=True))
    return state


def run_form(prefix: str, conf: Path, tmp_path: Path, daemons: list, vxlan: bool) -> dict:
    _underlay, nodes = start_cluster(prefix, conf, tmp_path, daemons)
    wait_for(lambda: programmed(nodes, vxlan), timeout=60, interval=0.5)
    state = normalised(nodes)
    a, c = nodes[0], nodes[2]
    src, dst = (n.subnet_env()["FLANNEL_SUBNET"].split("/")[0] for n in (a, c))
    assert tcp_crosses(a.ns, src, c.ns, dst) == f"hello from {src}"
    # kill -9 and restart one node: reconcile re-adds everything, and nothing changes.
    a.kill()
    a.start(wait=True, timeout=30)
    wait_for(lambda: normalised(nodes) == state, timeout=30, interval=0.5)
    for node in nodes:
        node.stop()
    return state


@pytest.mark.parametrize("dataplane, vxlan", [("host-gw", False), ("vxlan", True)])
def test_shell_and_python_recipes_leave_the_same_state(netns_prefix, tmp_path, daemons, dataplane, vxlan):
    shell_conf = RECIPES / f"{dataplane}.json"
    python_conf = tmp_path / "python.json"
    python_conf.write_text(json.dumps({"Network": "10.50.0.0/16",
                                       "Backend": {"Type": "extension", "Hook": dataplane}}))
    shell = run_form(netns_prefix + "s", shell_conf, tmp_path, daemons, vxlan)
    python = run_form(netns_prefix + "p", python_conf, tmp_path, daemons, vxlan)
    assert python == shell
    if vxlan:
        assert shell["n1"]["links"]["flannel.1"] == {"mtu": 1450, "up": True, "id": 1, "local": "192.168.77.2",
                                                     "link": "eth0", "port": 8472, "learning": False}
        assert shell["n1"]["addrs"] == {"flannel.1": ["<subnet of n1>.0/32"]}
