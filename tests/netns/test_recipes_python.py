"""The Python host-gw and vxlan recipes on a real kernel: state, idempotency, data crossing.

Recipes program the *current* namespace (the daemon runs inside the node's), so each
hook call runs in a child `python3 THIS_FILE` started with ``ip netns exec <node>``: the
test process itself never enters a namespace and never touches the root one. The child
reads a plan (hook spec, options, context, steps) as JSON on stdin and prints results.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

NETWORK = "10.50.0.0/16"
NODES = 3


# --- the child side ---------------------------------------------------------------------
def _lease(d: dict):
    from flannel_ext import RemoteLease
    return RemoteLease(subnet=ipaddress.IPv4Network(d["subnet"]), public_ip=d["public_ip"],
                       backend_type=d.get("backend_type", "extension"),
                       backend_data=d.get("backend_data", ""),
                       backend_data_raw=d.get("backend_data_raw"),
                       key=d["subnet"].replace("/", "-"))


def _child(plan: dict) -> list:
    from flannel_ext import BatchError, HookContext
    from flannel_ext._config.netconf import load_netconf
    from flannel_ext._hooks.loader import load_hook, load_python_hook
    if plan.get("net_conf"):            # a shell (or Python) recipe file, loaded as the runtime does
        hook = load_hook(load_netconf(plan["net_conf"]))
    else:
        hook = load_python_hook(plan["hook"], plan.get("options", {}), source=plan.get("source", "t.json"))
    c = plan["ctx"]
    ctx = HookContext(network=ipaddress.IPv4Network(c["network"]), options=plan.get("options", {}),
                      log=logging.getLogger("test"), state_dir=Path(c.get("state_dir", "/tmp")),
                      subnet=ipaddress.IPv4Network(c["subnet"]) if c.get("subnet") else None,
                      public_ip=c.get("public_ip", ""), iface=c.get("iface"))
    out = []
    for name, *args in plan["steps"]:
        method = getattr(hook, name)
        if name.endswith("_batch"):
            args = [[_lease(d) for d in args[0]]]
        elif name.startswith("subnet_"):
            args = [_lease(args[0])]
        try:
            out.append({"ok": method(*args, ctx)})
        except BatchError as exc:
            out.append({"error": "BatchError", "failures": {k: str(v) for k, v in exc.failures.items()}})
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out.append({"error": type(exc).__name__, "message": str(exc)})
    return out


if __name__ == "__main__":
    json.dump(_child(json.load(sys.stdin)), sys.stdout)
    sys.exit(0)


# --- the test side ----------------------------------------------------------------------
def run_hook(ns: str, plan: dict) -> list:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__], input=json.dumps(plan),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ip_json(ns: str, *argv: str) -> list:
    out = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def kernel_state(ns: str) -> dict:
    """Routes, neighbours, FDB and the vxlan device, normalised (no ifindexes, no stats)."""
    routes = [r for r in ip_json(ns, "ip", "-d", "-j", "route", "show", "table", "main")]
    neigh = [n for n in ip_json(ns, "ip", "-j", "neigh", "show", "nud", "permanent")]
    fdb = [f for f in ip_json(ns, "bridge", "-j", "fdb", "show") if "self" in f.get("flags", [])
           and f.get("dst")]
    links = {}
    for link in ip_json(ns, "ip", "-j", "-d", "link", "show", "type", "vxlan"):
        info = link["linkinfo"]["info_data"]
        links[link["ifname"]] = {"mtu": link["mtu"], "up": "UP" in link["flags"], "id": info["id"],
                                 "local": info.get("local"), "link": info.get("link"),
                                 "port": info["port"], "learning": info["learning"]}
    addrs = {a["ifname"]: sorted(f"{i['local']}/{i['prefixlen']}" for i in a["addr_info"])
             for a in ip_json(ns, "ip", "-j", "-4", "addr", "show") if a["ifname"].startswith("flannel")}
    key = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731
    return {"routes": sorted(routes, key=key), "neigh": sorted(neigh, key=key), "fdb": sorted(fdb, key=key),
            "links": links, "addrs": addrs}


def subnet_of(i: int) -> str:
    return f"10.50.{i}.0/24"


class Cluster:
    """`NODES` node namespaces on the underlay, each with a bridge `cni0` holding x.x.i.1/24."""

    def __init__(self, underlay, prefix: str):
        self.underlay, self.nodes = underlay, {}
        for i in range(1, NODES + 1):
            ns = f"{prefix}n{i}"
            self.nodes[ns] = (i, underlay.add_node(ns, i))
            sh = lambda *a: subprocess.run(["ip", "-n", ns, *a], check=True)  # noqa: E731
            sh("link", "add", "cni0", "type", "bridge")
            sh("addr", "add", f"10.50.{i}.1/24", "dev", "cni0")
            sh("link", "set", "cni0", "up")

    def ctx(self, ns: str) -> dict:
        i, ip = self.nodes[ns]
        return {"network": NETWORK, "subnet": subnet_of(i), "public_ip": ip, "iface": "eth0"}

    def remotes(self, ns: str, data: dict | None = None) -> list[dict]:
        return [{"subnet": subnet_of(i), "public_ip": ip, **({"backend_data": data[other]} if data else {})}
                for other, (i, ip) in self.nodes.items() if other != ns]


@pytest.fixture
def cluster(underlay, netns_prefix):
    return Cluster(underlay, netns_prefix)


def tcp_crosses(src_ns: str, src_ip: str, dst_ns: str, dst_ip: str, port: int = 5301) -> str:
    """Open a TCP connection src_ip → dst_ip:port (addresses on cni0) and echo a line."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, sys.executable, "-c",
         "import socket,sys\n"
         f"s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(({dst_ip!r}, {port})); s.listen(1); print('ready', flush=True)\n"
         "s.settimeout(30); c,a=s.accept(); c.sendall(c.recv(100) + (' from ' + a[0]).encode())\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(
            ["ip", "netns", "exec", src_ns, sys.executable, "-c",
             "import socket\n"
             f"s=socket.create_connection(({dst_ip!r}, {port}), timeout=20, source_address=({src_ip!r}, 0))\n"
             "s.sendall(b'hello'); print(s.recv(100).decode())\n"],
            capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        return client.stdout.strip()
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def vxlan_up(cluster, options: dict | None = None, hook: str = "vxlan", net_conf: str | None = None) -> dict:
    """pre_startup + post_startup on every node, then each adds the others; returns MACs."""
    macs = {}
    base = {"hook": hook, "options": options or {}, "net_conf": net_conf}
    for ns in cluster.nodes:
        res = run_hook(ns, {**base, "ctx": cluster.ctx(ns), "steps": [["pre_startup"], ["post_startup"]]})
        assert res[1] == {"ok": None}, res
        macs[ns] = res[0]["ok"]
    for ns in cluster.nodes:
        res = run_hook(ns, {**base, "ctx": cluster.ctx(ns),
                            "steps": [["subnet_add_batch", cluster.remotes(ns, macs)]]})
        assert res == [{"ok": None}], res
    return macs


def tx_packets(ns: str, dev: str) -> int:
    return ip_json(ns, "ip", "-s", "-j", "link", "show", dev)[0]["stats64"]["tx"]["packets"]


# --- host-gw ----------------------------------------------------------------------------
def test_hostgw_routes_cross_and_are_idempotent(cluster):
    n1, n2, n3 = cluster.nodes
    for ns in cluster.nodes:
        assert run_hook(ns, {"hook": "host-gw", "ctx": cluster.ctx(ns),
                             "steps": [["subnet_add_batch", cluster.remotes(ns)]]}) == [{"ok": None}]
    routes = {r["dst"]: r for r in ip_json(n1, "ip", "-d", "-j", "route")}
    for i, ip in ((2, "192.168.77.3"), (3, "192.168.77.4")):
        r = routes[subnet_of(i)]
        assert (r["gateway"], r["dev"], r["protocol"], r["scope"]) == (ip, "eth0", "boot", "global")
    assert tcp_crosses(n1, "10.50.1.1", n3, "10.50.3.1") == "hello from 10.50.1.1"

    before = kernel_state(n1)
    steps = [["subnet_add_batch", cluster.remotes(n1)]] + [["subnet_add", r] for r in cluster.remotes(n1)]
    assert run_hook(n1, {"hook": "host-gw", "ctx": cluster.ctx(n1), "steps": steps}) == [{"ok": None}] * 3
    assert kernel_state(n1) == before

    # Removal deletes the route; removing again (already gone) is fine.
    gone = cluster.remotes(n1)[0]
    res = run_hook(n1, {"hook": "host-gw", "ctx": cluster.ctx(n1),
                        "steps": [["subnet_remove", gone], ["subnet_remove_batch", [gone]]]})
    assert res == [{"ok": None}, {"ok": None}]
    dsts = {r["dst"] for r in ip_json(n1, "ip", "-j", "route")}
    assert gone["subnet"] not in dsts and subnet_of(3) in dsts


def test_hostgw_refuses_a_public_ip_that_is_not_on_link(cluster):
    n1 = next(iter(cluster.nodes))
    far = {"subnet": "10.50.9.0/24", "public_ip": "10.99.0.5"}
    res = run_hook(n1, {"hook": "host-gw", "ctx": cluster.ctx(n1),
                        "steps": [["subnet_add", far],
                                  ["subnet_add_batch", [far] + cluster.remotes(n1)]]})
    assert res[0]["error"] == "PermanentError"
    assert "10.99.0.5 is not on-link via eth0 (192.168.77.0/24)" in res[0]["message"]
    # In a batch only the bad lease fails; the others are programmed.
    assert res[1]["error"] == "BatchError" and list(res[1]["failures"]) == ["10.50.9.0-24"]
    dsts = {r["dst"] for r in ip_json(n1, "ip", "-j", "route")}
    assert {subnet_of(2), subnet_of(3)} <= dsts and "10.50.9.0/24" not in dsts


# --- vxlan ------------------------------------------------------------------------------
def test_vxlan_state_mirrors_flannel_and_data_crosses(cluster):
    macs = vxlan_up(cluster)
    n1, n2, n3 = cluster.nodes
    state = kernel_state(n1)
    assert state["links"] == {"flannel.1": {"mtu": 1450, "up": True, "id": 1, "local": "192.168.77.2",
                                            "link": "eth0", "port": 8472, "learning": False}}
    assert state["addrs"] == {"flannel.1": ["10.50.1.0/32"]}
    for other, i, ip in ((n2, 2, "192.168.77.3"), (n3, 3, "192.168.77.4")):
        assert {"dst": f"10.50.{i}.0", "dev": "flannel.1", "lladdr": macs[other],
                "state": ["PERMANENT"]} in state["neigh"]
        assert {"mac": macs[other], "ifname": "flannel.1", "dst": ip, "flags": ["self"],
                "state": "permanent"} in state["fdb"]
        route = next(r for r in state["routes"] if r["dst"] == subnet_of(i))
        assert (route["gateway"], route["dev"], route["flags"]) == (f"10.50.{i}.0", "flannel.1", ["onlink"])

    sent = tx_packets(n1, "flannel.1")
    assert tcp_crosses(n1, "10.50.1.1", n3, "10.50.3.1") == "hello from 10.50.1.1"
    assert tx_packets(n1, "flannel.1") > sent          # it went through the tunnel


def test_vxlan_is_idempotent_and_reuses_its_device(cluster):
    macs = vxlan_up(cluster)
    n1 = next(iter(cluster.nodes))
    before = kernel_state(n1)
    remotes = cluster.remotes(n1, macs)
    res = run_hook(n1, {"hook": "vxlan", "ctx": cluster.ctx(n1),
                        "steps": [["pre_startup"], ["post_startup"], ["subnet_add_batch", remotes],
                                  ["subnet_add", remotes[0]]]})
    assert res[0] == {"ok": macs[n1]}                  # a matching device is reused: same MAC
    assert kernel_state(n1) == before


def test_vxlan_remove_and_shutdown(cluster):
    macs = vxlan_up(cluster)
    n1 = next(iter(cluster.nodes))
    gone, kept = cluster.remotes(n1, macs)
    res = run_hook(n1, {"hook": "vxlan", "ctx": cluster.ctx(n1),
                        "steps": [["subnet_remove", gone], ["subnet_remove_batch", [gone]]]})
    assert res == [{"ok": None}, {"ok": None}]
    state = kernel_state(n1)
    gone_ip = gone["subnet"].split("/")[0]
    assert [n["dst"] for n in state["neigh"]] == [kept["subnet"].split("/")[0]]
    assert [f["dst"] for f in state["fdb"]] == [kept["public_ip"]]
    assert gone["subnet"] not in {r["dst"] for r in state["routes"]}
    assert gone_ip not in json.dumps(state["neigh"])
    assert run_hook(n1, {"hook": "vxlan", "ctx": cluster.ctx(n1), "steps": [["shutdown"], ["shutdown"]]}) \
        == [{"ok": None}, {"ok": None}]
    assert kernel_state(n1)["links"] == {}


def test_vxlan_recreates_a_device_that_does_not_match(cluster):
    n1 = next(iter(cluster.nodes))
    subprocess.run(["ip", "-n", n1, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0",
                    "dstport", "4789", "learning"], check=True)
    run_hook(n1, {"hook": "vxlan", "ctx": cluster.ctx(n1), "steps": [["pre_startup"]]})
    assert kernel_state(n1)["links"]["flannel.1"] == {
        "mtu": 1450, "up": False, "id": 1, "local": "192.168.77.2", "link": "eth0", "port": 8472,
        "learning": False}


def test_vxlan_options_vni_port_mtu(cluster):
    n1 = next(iter(cluster.nodes))
    opts = {"vni": 7, "Port": 4789, "MTU": 1400}          # keys are case-insensitive
    res = run_hook(n1, {"hook": "vxlan", "options": opts, "ctx": cluster.ctx(n1),
                        "steps": [["pre_startup"], ["mtu"]]})
    assert res[1] == {"ok": 1350}
    link = kernel_state(n1)["links"]["flannel.7"]
    assert (link["id"], link["port"], link["mtu"]) == (7, 4789, 1350)


def test_vxlan_accepts_flannel_native_backend_data(cluster):
    n1, n2, n3 = cluster.nodes
    vxlan_up(cluster)
    native = {"subnet": "10.50.8.0/24", "public_ip": "192.168.77.9", "backend_type": "vxlan",
              "backend_data_raw": '{"VNI":1,"VtepMAC":"0A:00:00:00:00:08"}'}
    bad = {"subnet": "10.50.9.0/24", "public_ip": "192.168.77.10", "backend_data": "not-a-mac"}
    res = run_hook(n1, {"hook": "vxlan", "ctx": cluster.ctx(n1), "steps": [["subnet_add_batch", [native, bad]]]})
    assert res[0]["error"] == "BatchError" and list(res[0]["failures"]) == ["10.50.9.0-24"]
    assert "not a unicast VTEP MAC: 'not-a-mac'" in res[0]["failures"]["10.50.9.0-24"]
    state = kernel_state(n1)
    assert {"mac": "0a:00:00:00:00:08", "ifname": "flannel.1", "dst": "192.168.77.9", "flags": ["self"],
            "state": "permanent"} in state["fdb"]
    assert "10.50.9.0/24" not in {r["dst"] for r in state["routes"]}


def test_vxlan_direct_routing(cluster):
    macs = vxlan_up(cluster, {"DirectRouting": True})
    n1, n2, n3 = cluster.nodes
    state = kernel_state(n1)
    route = next(r for r in state["routes"] if r["dst"] == subnet_of(2))
    assert (route["gateway"], route["dev"]) == ("192.168.77.3", "eth0")
    assert state["neigh"] == [] and state["fdb"] == []
    # A node that is not on-link still goes through the tunnel.
    far = {"subnet": "10.50.9.0/24", "public_ip": "10.99.0.5", "backend_data": macs[n2]}
    run_hook(n1, {"hook": "vxlan", "options": {"DirectRouting": True}, "ctx": cluster.ctx(n1),
                  "steps": [["subnet_add", far]]})
    route = next(r for r in kernel_state(n1)["routes"] if r["dst"] == "10.50.9.0/24")
    assert (route["gateway"], route["dev"]) == ("10.50.9.0", "flannel.1")
    assert tcp_crosses(n1, "10.50.1.1", n3, "10.50.3.1") == "hello from 10.50.1.1"
    res = run_hook(n1, {"hook": "vxlan", "options": {"DirectRouting": True}, "ctx": cluster.ctx(n1),
                        "steps": [["subnet_remove_batch", cluster.remotes(n1, macs) + [far]]]})
    assert res == [{"ok": None}]
    assert {r["dst"] for r in kernel_state(n1)["routes"]} & {subnet_of(2), subnet_of(3), "10.50.9.0/24"} == set()
