"""`flannel-ext lab` end to end: real namespaces, daemons, CNI pods and packets.

Every test uses its own lab name (from `netns_prefix`) and runs `lab down` in a finally;
the fixture then removes anything left under the prefix. Waits poll real state against
a generous deadline and never assert on durations (bench/bench_lab.py measures those).
"""
from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import shutil
import signal
import subprocess

import pytest

from policy_lab import lab_cmd

from flannel_ext._util.netns import ip_json, list_netns, sh
from flannel_ext._lab import check, daemons, pods, topology
from flannel_ext import testing
from flannel_ext._lab.state import Lab, lab_dir

REPO = pathlib.Path(__file__).resolve().parents[2]
NETWORK = "10.244.0.0/16"  # the shipped recipes' Network, so a live switch keeps it




def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def recipe(tmp_path: pathlib.Path, kind: str) -> pathlib.Path:
    """A writable net-conf for `kind`: a shipped JSON recipe, or a Python recipe by name."""
    dest = tmp_path / "net-conf.json"
    if kind.endswith(".json"):
        src = REPO / "recipes" / kind
        shutil.copy(src, dest)
    else:
        dest.write_text(json.dumps({"Network": NETWORK, "Backend": {"Type": "extension", "Hook": kind}}))
    return dest


def wait_for(what: str, predicate, timeout: float = 60.0):
    return testing.wait_for(predicate, timeout, 0.1, what=what)


def check_json(name: str, wait: float = 0) -> dict:
    proc = lab_cmd("check", "--name", name, "--json", "--wait", str(wait))
    doc = json.loads(proc.stdout)
    assert (proc.returncode == 0) == doc["ok"]
    return doc


def full_matrix(doc: dict, pods_expected: int) -> None:
    assert len(doc["pods"]) == pods_expected
    assert doc["summary"] == {"pairs": pods_expected * (pods_expected - 1), "failed": 0}, \
        [p for p in doc["pairs"] if not p["ok"]]
    assert all(p["tcp"] and p["icmp"] for p in doc["pairs"])



def up(name: str, net_conf: pathlib.Path, nodes: int = 3) -> str:
    return ok(lab_cmd("up", "--name", name, "--nodes", str(nodes), "--pods-per-node", "2",
                      "--net-conf", str(net_conf)))


@pytest.mark.parametrize("kind", ["host-gw.json", "vxlan.json", "vxlan", "host-gw"])
def test_up_gives_a_full_matrix(lab_name, tmp_path, kind):
    out = up(lab_name, recipe(tmp_path, kind))
    for step in ("nodes", "daemons", "leases", "pods", "routes", "matrix"):
        assert f"] {step}" in out
    assert "30/30 pairs ok" in out
    full_matrix(check_json(lab_name), 6)
    status = json.loads(ok(lab_cmd("status", "--name", lab_name, "--json")))
    assert [n["node"] for n in status["nodes"]] == ["n1", "n2", "n3"]
    subnets = [ipaddress.ip_network(n["subnet"]) for n in status["nodes"]]
    assert len(set(subnets)) == 3 and all(s.subnet_of(ipaddress.ip_network(NETWORK)) for s in subnets)
    for node in status["nodes"]:
        assert node["running"] and node["hook_failures"] == 0 and node["rejected"] == 0
        assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(node["subnet"])
                   for ip in node["pods"].values())
    assert "hook=" in ok(lab_cmd("logs", "--name", lab_name, "n1", "--hooks"))


def _kernel(ns: str) -> tuple[list, list, list]:
    fdb = json.loads(sh(["bridge", "-n", ns, "-j", "fdb", "show"]).stdout or "[]")
    return ip_json(ns, "route", "show"), ip_json(ns, "neigh", "show"), fdb


def test_rm_node_cleans_the_others_and_add_node_is_reachable(lab_name, tmp_path):
    up(lab_name, recipe(tmp_path, "vxlan"))
    lab = Lab.load(lab_name)
    gone = lab.nodes["n2"]
    gw = str(ipaddress.ip_network(gone.subnet).network_address)
    for other in ("n1", "n3"):  # before: n1 and n3 know n2 (route, neighbour, FDB)
        routes, neigh, fdb = _kernel(lab.nodes[other].ns)
        assert any(r["dst"] == gone.subnet for r in routes)
        assert any(n["dst"] == gw for n in neigh)
        assert any(f.get("dst") == gone.ip for f in fdb)

    out = ok(lab_cmd("rm-node", "--name", lab_name, "n2"))
    assert "lease released" in out
    assert not topology.alive(gone.pid, daemons.marker(lab, gone))
    assert gone.ns not in list_netns(lab.prefix)
    assert not any(ns.startswith(f"{gone.ns}-pod") for ns in list_netns(lab.prefix))
    for other in ("n1", "n3"):  # SubnetRemove ran on the others
        routes, neigh, fdb = _kernel(lab.nodes[other].ns)
        assert not any(r["dst"] == gone.subnet for r in routes)
        assert not any(n["dst"] == gw for n in neigh)
        assert not any(f.get("dst") == gone.ip for f in fdb)
    full_matrix(check_json(lab_name), 4)

    out = ok(lab_cmd("add-node", "--name", lab_name))
    assert "n4" in out and "30/30 pairs ok" in out
    doc = check_json(lab_name)
    full_matrix(doc, 6)
    assert sum(p.startswith(f"{lab_name}-n4-") for p in doc["pods"]) == 2


def _vxlan_everywhere(lab: Lab) -> bool:
    return all(any(link.get("linkinfo", {}).get("info_kind") == "vxlan"
                   for link in ip_json(n.ns, "-d", "link", "show")) and
               not daemons.missing_routes(lab, [n]) for n in lab.nodes.values())


def _log_sizes(lab: Lab) -> dict:
    return {n: os.path.getsize(lab.log_file(n)) for n in lab.nodes}


def _logged_since(lab: Lab, sizes: dict, text: str) -> bool:
    """Every node's log has `text` after the offsets in `sizes`."""
    for node, size in sizes.items():
        with open(lab.log_file(node), encoding="utf-8") as f:
            f.seek(size)
            if text not in f.read():
                return False
    return True


def test_live_recipe_switch_and_invalid_edit(lab_name, tmp_path):
    net_conf = recipe(tmp_path, "host-gw.json")
    up(lab_name, net_conf)
    lab = Lab.load(lab_name)
    assert not _vxlan_everywhere(lab)

    # host-gw -> vxlan (shell recipe) -> vxlan (Python recipe), edited in place.
    shell_vxlan = REPO / "recipes" / "vxlan.json"
    steps = [shell_vxlan.read_text()] if shell_vxlan.exists() else []
    steps.append(json.dumps({"Network": NETWORK, "Backend": {"Type": "extension", "Hook": "vxlan"}}))
    for text in steps:
        sizes = _log_sizes(lab)
        net_conf.write_text(text)
        wait_for("every node to reload", lambda: _logged_since(lab, sizes, "configuration changed"))
        wait_for("vxlan on every node", lambda: _vxlan_everywhere(lab))
        full_matrix(check_json(lab_name, wait=30), 6)

    # An invalid edit: every daemon rejects it in its log and keeps the running dataplane.
    sizes = _log_sizes(lab)
    net_conf.write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": ')
    wait_for("every daemon to reject the edit", lambda: _logged_since(lab, sizes, "reload rejected"))
    assert not any(_logged_since(lab, {n: s}, "configuration changed") for n, s in sizes.items())
    assert _vxlan_everywhere(lab)
    full_matrix(check_json(lab_name), 6)
    status = json.loads(ok(lab_cmd("status", "--name", lab_name, "--json")))
    assert all(n["running"] for n in status["nodes"])


def test_down_after_kill_9_leaves_nothing(lab_name, tmp_path):
    root_links = {link["ifname"] for link in json.loads(sh(["ip", "-j", "link"]).stdout)}
    up(lab_name, recipe(tmp_path, "vxlan"))
    lab = Lab.load(lab_name)
    pids = [n.pid for n in lab.nodes.values()] + [p.listener_pid for _, p in lab.pods()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for("the daemons to die", lambda: not any(daemons.running(lab, n) for n in lab.nodes.values()))

    out = ok(lab_cmd("down", "--name", lab_name))
    assert "namespaces" in out
    assert list_netns(f"{lab_name}-") == []
    assert not os.path.exists(lab_dir(lab_name))
    assert not any(topology.cmdline(pid) and lab_name in topology.cmdline(pid) for pid in pids)
    assert not [pid for pid in os.listdir("/proc")
                if pid.isdigit() and lab_dir(lab_name) in topology.cmdline(int(pid))]
    assert {link["ifname"] for link in json.loads(sh(["ip", "-j", "link"]).stdout)} <= root_links
    assert ok(lab_cmd("down", "--name", lab_name)).strip() == f"lab {lab_name}: nothing to remove"


# -- pods and hints without daemons: subnet.env and the dataplane written by hand ----------

def test_check_hints_name_the_missing_route_neighbour_and_fdb(netns_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("FLANNEL_EXT_LAB_ROOT", str(tmp_path / "labs"))
    lab = Lab(name=netns_prefix.rstrip("-"), net_conf="-", store="-")
    topology.create_hub(lab)
    nodes = [topology.add_node(lab, f"n{i}") for i in (1, 2)]
    for i, node in enumerate(nodes, 1):
        node.subnet = f"10.77.{i}.0/24"
        pathlib.Path(lab.subnet_env(node.name)).write_text(
            f"FLANNEL_NETWORK=10.77.0.0/16\nFLANNEL_SUBNET=10.77.{i}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    try:
        pods.add_pods(lab, nodes, 1)
        a, b = nodes
        report = check.run_check(lab, timeout=0.5)
        assert not report.ok
        there, back = (f"{lab.prefix}n1-pod1", f"{lab.prefix}n2-pod1"), (f"{lab.prefix}n2-pod1", f"{lab.prefix}n1-pod1")
        assert any(f"{a.name} has no route to {b.subnet}" in h for h in report.hints[there])

        # A hand-made vxlan dataplane, then break it piece by piece.
        macs = {}
        for node in (a, b):
            sh(["ip", "-n", node.ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0",
                "local", node.ip, "dstport", "8472", "nolearning"])
            sh(["ip", "-n", node.ns, "link", "set", "flannel.1", "mtu", "1450", "up"])
            sh(["ip", "-n", node.ns, "addr", "add", node.subnet.replace(".0/24", ".0/32"), "dev", "flannel.1"])
            macs[node.name] = ip_json(node.ns, "link", "show", "flannel.1")[0]["address"]
        for node, peer in ((a, b), (b, a)):
            gw = peer.subnet.replace(".0/24", ".0")
            sh(["ip", "-n", node.ns, "neigh", "replace", gw, "lladdr", macs[peer.name], "dev", "flannel.1",
                "nud", "permanent"])
            sh(["bridge", "-n", node.ns, "fdb", "append", macs[peer.name], "dev", "flannel.1", "dst", peer.ip,
                "self", "permanent"])
            sh(["ip", "-n", node.ns, "route", "replace", peer.subnet, "via", gw, "dev", "flannel.1", "onlink"])
        assert check.run_check(lab, timeout=5).ok

        sh(["bridge", "-n", a.ns, "fdb", "del", macs[b.name], "dev", "flannel.1", "dst", b.ip, "self"])
        report = check.run_check(lab, timeout=0.5)
        hints = report.hints[there]
        assert any(f"{a.name} has no FDB entry {macs[b.name]} dst {b.ip} on flannel.1" in h for h in hints)
        assert any(h.startswith("return path: n1 has no FDB") for h in report.hints[back])
        text = check.format_text(report)
        assert "FAIL" in text and "0/2 pairs ok, 2 failed" in text

        sh(["ip", "-n", a.ns, "neigh", "del", "10.77.2.0", "dev", "flannel.1"])
        hints = check.run_check(lab, timeout=0.5).hints[(f"{lab.prefix}n1-pod1", f"{lab.prefix}n2-pod1")]
        assert any(f"{a.name} has no neighbour entry for 10.77.2.0 on flannel.1" in h for h in hints)
        doc = check.to_json(check.run_check(lab, timeout=0.5))
        assert doc["ok"] is False and doc["summary"]["failed"] == 2
    finally:
        for node in nodes:
            topology.kill([(p.listener_pid, p.name) for p in node.pods.values()])
        topology.delete_namespaces(list_netns(lab.prefix))
