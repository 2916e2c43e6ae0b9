"""A node joins a vxlan cluster with N remote leases already in the store: how long until
every neighbour, FDB entry and route is programmed?

Timed in one run, for N = 100, 1000, 5000 (``--sizes``):

* flannel-style: flannel's dist/extension-vxlan SubnetAddCommand, one ``sh -c`` per
  event, sequentially (what flanneld ≤ v0.28.1 did);
* our shell recipe (recipes/vxlan.json) through the runtime's ShellHook batch method
  (bounded parallelism across subnets);
* our Python recipe (recipes/vxlan.py) through its batch method (pipelined netlink);
* the floor: the same entries loaded with ``ip -batch`` and ``bridge -batch`` from files
  written before the clock starts (the best of three runs).

Every method's CPU time (its own and its children's) is printed next to the wall time:
route and neighbour changes take the kernel's one RTNL lock, which every namespace on
the machine shares, so on a busy machine wall time also measures other people's work.

Everything happens in a scratch namespace that this script creates and always removes:

    sudo python3 bench/bench_join.py [--sizes 100,1000,5000]
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV = "flannel.1"
# flannel's dist/extension-vxlan SubnetAddCommand, verbatim except the device name.
FLANNEL_ADD = ('export SUBNET_IP=$(echo "$SUBNET" | cut -d\'/\' -f 1); export IF_NAME=flannel.1; read VTEP; '
               'ip route add "$SUBNET" nexthop via "$SUBNET_IP" dev "$IF_NAME" onlink && '
               'ip neigh replace "$SUBNET_IP" dev "$IF_NAME" lladdr "$VTEP" && '
               'bridge fdb add "$VTEP" dev "$IF_NAME" self dst "$PUBLIC_IP"')


def leases(n: int):
    """N remote leases: /24s from 10.0.0.0/8, public IPs on-link in 172.16.0.0/12."""
    from flannel_ext import RemoteLease
    out = []
    for i in range(1, n + 1):
        subnet = ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.0.0.0")) + (i << 8), 24))
        public = str(ipaddress.IPv4Address("172.16.0.0") + 1 + i)
        mac = f"02:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:00:01"
        out.append(RemoteLease(subnet=subnet, public_ip=public, backend_data=mac,
                               key=str(subnet).replace("/", "-")))
    return out


def ctx():
    from flannel_ext import HookContext
    return HookContext(network=ipaddress.IPv4Network("10.0.0.0/8"), options={}, log=logging.getLogger("bench"),
                       state_dir=Path(tempfile.mkdtemp(prefix="bench-join-")),
                       subnet=ipaddress.IPv4Network("10.0.0.0/24"), public_ip="172.16.0.1", iface="eth0")


def fresh_device(hook, c) -> None:
    """Delete and recreate flannel.1: every neighbour, FDB entry and route through it goes."""
    subprocess.run(["ip", "link", "del", DEV], capture_output=True)
    hook.pre_startup(c)
    hook.post_startup(c)


def count_state() -> tuple[int, int, int]:
    def lines(*argv):
        return len(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines())
    return (lines("ip", "neigh", "show", "dev", DEV, "nud", "permanent"),
            lines("bridge", "fdb", "show", "dev", DEV),
            lines("ip", "route", "show", "dev", DEV))


def flannel_style(ls, c) -> None:
    for lease in ls:
        env = {**os.environ, "SUBNET": str(lease.subnet), "PUBLIC_IP": lease.public_ip}
        subprocess.run(["sh", "-c", FLANNEL_ADD], input=lease.backend_data + "\n", env=env, text=True,
                       capture_output=True, check=True)


def shell_recipe(ls, c) -> None:
    from flannel_ext._config.netconf import load_netconf
    from flannel_ext._hooks.loader import load_hook
    load_hook(load_netconf(str(REPO / "recipes" / "vxlan.json"))).subnet_add_batch(ls, c)


def python_recipe(ls, c) -> None:
    from flannel_ext._hooks.loader import load_python_hook
    load_python_hook("vxlan", {}).subnet_add_batch(ls, c)


def floor_files(ls) -> tuple[str, str]:
    """The floor's input, written before it is timed (building it is not the kernel's cost)."""
    ip_lines, fdb_lines = [], []
    for lease in ls:
        sip = lease.subnet.network_address
        ip_lines.append(f"neigh replace {sip} dev {DEV} lladdr {lease.backend_data} nud permanent")
        ip_lines.append(f"route replace {lease.subnet} via {sip} dev {DEV} onlink")
        fdb_lines.append(f"fdb replace {lease.backend_data} dev {DEV} self dst {lease.public_ip} permanent")
    paths = []
    for lines in (ip_lines, fdb_lines):
        fd, path = tempfile.mkstemp(prefix="bench-join-floor-")
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def floor(ls, c) -> None:
    ip_file, fdb_file = FLOOR_FILES[len(ls)]
    subprocess.run(["ip", "-batch", ip_file], check=True)
    subprocess.run(["bridge", "-batch", fdb_file], check=True)


FLOOR_FILES: dict[int, tuple[str, str]] = {}
METHODS = [("flannel-style sequential `sh -c`", flannel_style), ("shell recipe (ShellHook batch)", shell_recipe),
           ("Python recipe (batch, pipelined netlink)", python_recipe), ("floor: `ip -batch` + `bridge -batch`", floor)]


def inner(sizes: list[int], only: list[str]) -> None:
    methods = [m for m in METHODS if not only or any(word in m[0].lower() for word in only)] + [METHODS[-1]]
    from flannel_ext._hooks.loader import load_python_hook
    from flannel_ext._hooks.shell import ShellHook
    hook, c = load_python_hook("vxlan", {}), ctx()
    results, cpu = {}, {}
    for n in sizes:
        ls = leases(n)
        FLOOR_FILES[n] = floor_files(ls)
        for name, method in dict(methods).items():
            runs = []
            for _ in range(3 if method is floor else 1):
                fresh_device(hook, c)
                before, start = os.times(), time.perf_counter()
                method(ls, c)
                wall, after = time.perf_counter() - start, os.times()
                runs.append((wall, sum(after[:4]) - sum(before[:4])))
                assert count_state() == (n, n, n), (name, n, count_state())
            results[(n, name)], cpu[(n, name)] = min(runs)
        for path in FLOOR_FILES.pop(n):
            os.unlink(path)
    print(f"\nNode join, vxlan, {os.cpu_count()} cores; ShellHook.max_parallel = {ShellHook.max_parallel}.\n")
    print("| N | method | time (s) | per lease (ms) | × floor | CPU (s) |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in sizes:
        base = results[(n, METHODS[-1][0])]
        for name in dict(methods):
            t = results[(n, name)]
            print(f"| {n} | {name} | {t:.3f} | {t / n * 1000:.3f} | {t / base:.1f} | {cpu[(n, name)]:.2f} |")


def outer(sizes: list[int], only: str) -> int:
    ns = f"fxbench{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        for argv in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "bridge"],
                     ["addr", "add", "172.16.0.1/12", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            subprocess.run(["ip", "-n", ns, *argv], check=True)
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
                               "--sizes", ",".join(map(str, sizes)), "--methods", only], cwd=REPO).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--methods", default="", help="only methods whose name has one of these words "
                        "(comma-separated, e.g. python), besides the floor")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.inner:
        inner(sizes, [w for w in args.methods.lower().split(",") if w])
        return 0
    return outer(sizes, args.methods)


if __name__ == "__main__":
    sys.exit(main())
