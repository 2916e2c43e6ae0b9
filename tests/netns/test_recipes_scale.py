"""The Python recipes' batch path at a few thousand leases: every batch lands completely.

The dispatcher hands a joining node its leases in batches of 1,024, each onto a table
that already holds the previous ones; the recipes check on-link from the interface's
addresses instead of dumping that table. The test drives the recipe the same way in a
node namespace (a child process, as in test_recipes_python.py) and compares the whole
kernel state with the leases: routes, and for vxlan neighbours and FDB entries too.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import sys

import pytest

LEASES = 3000
BATCH = 1024


def lease(i: int) -> dict:
    """Remote node i: a /24 in 10.0.0.0/8 and a public IP on the 172.16.0.0/12 underlay."""
    return {"subnet": f"10.{i >> 8}.{i & 255}.0/24", "public_ip": str(ipaddress.IPv4Address("172.18.0.0") + i),
            "mac": f"02:00:{i >> 8:02x}:{i & 255:02x}:00:01"}


def _child(plan: dict) -> list:
    from flannel_ext import BatchError, HookContext, RemoteLease
    from flannel_ext._hooks.loader import load_python_hook
    hook = load_python_hook(plan["hook"], {})
    ctx = HookContext(network=ipaddress.IPv4Network("10.0.0.0/8"), options={}, log=logging.getLogger("t"),
                      state_dir="/tmp", subnet=ipaddress.IPv4Network("10.255.255.0/24"),
                      public_ip="172.16.0.1", iface="eth0")
    if plan["hook"] == "vxlan":
        hook.pre_startup(ctx)
        hook.post_startup(ctx)
    out = []
    for method, first, last in plan["steps"]:
        leases = [RemoteLease(subnet=ipaddress.IPv4Network(d["subnet"]), public_ip=d["public_ip"],
                              backend_data=d["mac"], key=d["subnet"].replace("/", "-"))
                  for d in map(lease, range(first, last + 1))]
        for start in range(0, len(leases), BATCH):
            try:
                getattr(hook, method)(leases[start:start + BATCH], ctx)
                out.append("ok")
            except BatchError as exc:
                out.append({k: str(v) for k, v in list(exc.failures.items())[:3]})
    return out


if __name__ == "__main__":
    json.dump(_child(json.load(sys.stdin)), sys.stdout)
    sys.exit(0)


def run(ns: str, plan: dict) -> list:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__], input=json.dumps(plan),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ip_json(ns: str, *argv: str) -> list:
    out = subprocess.run([argv[0], "-n", ns, "-j", *argv[1:]], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


@pytest.fixture
def node(netns_prefix):
    ns = f"{netns_prefix}n1"
    for argv in (["netns", "add", ns], ["-n", ns, "link", "set", "lo", "up"],
                 ["-n", ns, "link", "add", "eth0", "type", "bridge"],
                 ["-n", ns, "addr", "add", "172.16.0.1/12", "dev", "eth0"], ["-n", ns, "link", "set", "eth0", "up"]):
        subprocess.run(["ip", *argv], check=True)
    return ns


def expected(first: int, last: int) -> set:
    return {(lease(i)["subnet"], lease(i)["public_ip"], lease(i)["mac"]) for i in range(first, last + 1)}


def test_hostgw_batches_program_every_route(node):
    assert run(node, {"hook": "host-gw", "steps": [["subnet_add_batch", 1, LEASES]]}) == ["ok"] * 3
    routes = {(r["dst"], r["gateway"]) for r in ip_json(node, "ip", "route", "show", "proto", "boot")}
    assert routes == {(s, ip) for s, ip, _ in expected(1, LEASES)}
    assert run(node, {"hook": "host-gw", "steps": [["subnet_remove_batch", 1, 1500]]}) == ["ok"] * 2
    routes = {(r["dst"], r["gateway"]) for r in ip_json(node, "ip", "route", "show", "proto", "boot")}
    assert routes == {(s, ip) for s, ip, _ in expected(1501, LEASES)}


def test_vxlan_batches_program_every_route_neighbour_and_fdb_entry(node):
    assert run(node, {"hook": "vxlan", "steps": [["subnet_add_batch", 1, LEASES],
                                                 ["subnet_remove_batch", 1, 1000]]}) == ["ok"] * 4
    want = expected(1001, LEASES)
    routes = {(r["dst"], r["gateway"]) for r in ip_json(node, "ip", "route", "show", "dev", "flannel.1")
              if "gateway" in r}
    assert routes == {(s, s.split("/")[0]) for s, _, _ in want}
    neigh = {(n["dst"], n["lladdr"])
             for n in ip_json(node, "ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent")}
    assert neigh == {(s.split("/")[0], mac) for s, _, mac in want}
    fdb = {(f["mac"], f["dst"]) for f in ip_json(node, "bridge", "fdb", "show", "dev", "flannel.1") if f.get("dst")}
    assert fdb == {(mac, ip) for _, ip, mac in want}
