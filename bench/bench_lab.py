"""Lab figures: `lab up` + full matrix wall time, and edit → every node reprogrammed.

    sudo python3 bench/bench_lab.py [--nodes 3 10] [--repeat 3] [--recipe recipes/vxlan.json]
    sudo python3 bench/bench_lab.py --nodes 10 30 100 --pods-per-node 1 --tune-kernel --no-reload

With --tune-kernel, `lab up` raises the neighbour-table limits a big lab needs and each
`lab down` restores them. The RSS of every daemon is read once the lab is up.

Wall times are for the whole `flannel-ext lab up` command as a user runs it (interpreter
start, namespaces, daemons, leases, CNI pods, routes, the all-pairs matrix). The reload
figure starts at the write of net-conf.json (host-gw.json → vxlan.json, or --reload-to)
and stops when every
node routes every other subnet through its vxlan device, then when the matrix passes.
Targets: 3 nodes ≤ 5 s, 10 nodes ≤ 15 s, reload ≤ 2 s for 3 nodes.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from flannel_ext._util.netns import ip_json
from flannel_ext._lab import check
from flannel_ext._lab.state import Lab

REPO = pathlib.Path(__file__).resolve().parents[1]


def lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flannel_ext", "lab", *args],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def timed_up(name: str, nodes: int, net_conf: str, *extra: str) -> tuple[float, bool, str]:
    start = time.monotonic()
    proc = lab("up", "--name", name, "--nodes", str(nodes), "--net-conf", net_conf, *extra)
    wall = time.monotonic() - start
    return wall, proc.returncode == 0, proc.stdout + proc.stderr


def daemon_rss_mb(name: str) -> list[float]:
    """VmRSS of each node's `flannel-ext run` (from /proc/PID/status)."""
    sizes = []
    for node in Lab.load(name).nodes.values():
        try:
            status = pathlib.Path(f"/proc/{node.pid}/status").read_text()
        except OSError:
            continue
        sizes += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")]
    return sorted(sizes)


def steps_of(output: str) -> str:
    """'nodes 0.2 daemons 0.0 …' from the progress lines."""
    parts = []
    for line in output.splitlines():
        if line.startswith("[") and line.rstrip().endswith("s"):
            label = line.split("]", 1)[1].split()[0]
            parts.append(f"{label} {line.rstrip()[:-1].split()[-1]}")
    return ", ".join(parts)


def on_vxlan(lab_: Lab) -> bool:
    for node in lab_.nodes.values():
        kinds = {link["ifname"]: link.get("linkinfo", {}).get("info_kind")
                 for link in ip_json(node.ns, "-d", "link", "show")}
        routes = {r["dst"]: r.get("dev") for r in ip_json(node.ns, "route", "show")}
        for other in lab_.nodes.values():
            if other is not node and kinds.get(routes.get(other.subnet)) != "vxlan":
                return False
    return True


def target_conf(to: str, network: str) -> str:
    """--reload-to: a net-conf file, or the name of a Python recipe."""
    if os.path.exists(to):
        return pathlib.Path(to).read_text()
    return json.dumps({"Network": network, "Backend": {"Type": "extension", "Hook": to}})


def reload_time(name: str, workdir: pathlib.Path, to: str) -> tuple[float, float]:
    net_conf = workdir / "net-conf.json"
    shutil.copy(REPO / "recipes" / "host-gw.json", net_conf)
    network = json.loads(net_conf.read_text())["Network"]
    wall, ok, out = timed_up(name, 3, str(net_conf))
    if not ok:
        raise SystemExit(f"lab up failed:\n{out}")
    state = Lab.load(name)
    start = time.monotonic()
    net_conf.write_text(target_conf(to, network))
    while not on_vxlan(state):
        if time.monotonic() - start > 60:
            raise SystemExit("nodes were not reprogrammed within 60 s")
        time.sleep(0.01)
    programmed = time.monotonic() - start
    while not check.run_check(state, timeout=1.0).ok:
        if time.monotonic() - start > 60:
            raise SystemExit("matrix did not pass within 60 s of the edit")
    return programmed, time.monotonic() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--recipe", default=str(REPO / "recipes" / "vxlan.json"))
    p.add_argument("--reload-to", default=str(REPO / "recipes" / "vxlan.json"),
                   help="net-conf (or Python recipe name) the reload switches host-gw.json to")
    p.add_argument("--name", default="bench")
    p.add_argument("--pods-per-node", type=int, default=2)
    p.add_argument("--tune-kernel", action="store_true", help="pass --tune-kernel to lab up")
    p.add_argument("--no-reload", dest="reload", action="store_false", help="skip the reload measurement")
    args = p.parse_args()
    extra = ["--pods-per-node", str(args.pods_per_node)] + (["--tune-kernel"] if args.tune_kernel else [])
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    rows = []
    for n in args.nodes:
        walls = []
        for _ in range(args.repeat):
            lab("down", "--name", args.name)
            wall, ok, out = timed_up(args.name, n, args.recipe, *extra)
            rss = daemon_rss_mb(args.name) if ok else []
            lab("down", "--name", args.name)
            if not ok:
                raise SystemExit(f"lab up --nodes {n} failed:\n{out}")
            walls.append(wall)
            print(f"  {n:>2} nodes: {wall:5.2f}s  ({steps_of(out)}); daemon RSS median "
                  f"{statistics.median(rss):.1f} MB, max {rss[-1]:.1f} MB", flush=True)
        rows.append((f"lab up + full matrix, {n} nodes x {args.pods_per_node} pods ({pathlib.Path(args.recipe).name})",
                     statistics.median(walls), max(walls), {3: 5.0, 10: 15.0, 100: 90.0}.get(n)))
    programmed, matrix = [], []
    for _ in range(args.repeat if args.reload else 0):
        with tempfile.TemporaryDirectory() as tmp:
            lab("down", "--name", args.name)
            try:
                a, b = reload_time(args.name, pathlib.Path(tmp), args.reload_to)
            finally:
                lab("down", "--name", args.name)
        programmed.append(a)
        matrix.append(b)
        print(f"  reload: programmed {a:5.2f}s, matrix {b:5.2f}s", flush=True)
    to = pathlib.Path(args.reload_to).name
    if programmed:
        rows.append((f"edit host-gw.json -> {to}: 3 nodes reprogrammed", statistics.median(programmed),
                     max(programmed), 2.0))
        rows.append((f"edit host-gw.json -> {to}: full matrix passes", statistics.median(matrix), max(matrix),
                     None))
    print(f"\n{'measure':<62} {'median':>7} {'max':>7} {'target':>7}")
    for label, med, worst, target in rows:
        print(f"{label:<62} {med:6.2f}s {worst:6.2f}s {'' if target is None else f'{target:.0f}s':>7}")
    print(f"({args.repeat} runs each, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
