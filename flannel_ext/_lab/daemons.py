"""One `flannel-ext run` per node, started inside the node namespace like a DaemonSet pod.

``ip netns exec <ns> flannel-ext run ...`` execs in place, so the recorded PID is the
daemon itself. Its stderr goes to ``nodes/<node>/flannel-ext.log``; it writes
``subnet.env`` when its lease is ready and ``state/stats.json`` as it works.
"""
from __future__ import annotations

import json
import os
import sys
import time

from flannel_ext._util.netns import ip_json
from flannel_ext._runtime.subnetenv import SubnetEnvError, load as load_subnet_env
from flannel_ext._lab.state import Lab, LabError, Node
from flannel_ext._lab.topology import alive, spawn


def run_argv(lab: Lab, node: Node) -> list[str]:
    """The daemon's command line; the node dir in it is the marker `alive()` checks."""
    return [sys.executable, "-m", "flannel_ext", "run",
            "--net-conf", lab.net_conf, "--store", lab.store, "--iface", "eth0",
            "--subnet-file", lab.subnet_env(node.name), "--state-dir", lab.state_dir(node.name),
            "--node-name", node.name, "--log-format", "json", "--release-lease-on-exit",
            *(["--watch"] if lab.watch else []),
            *(["--policy", lab.policy, "--policy-source", f"file:{lab.cluster_file}"] if lab.policy else [])]


def marker(lab: Lab, node: Node) -> str:
    return lab.subnet_env(node.name)


def start(lab: Lab, node: Node) -> int:
    os.makedirs(lab.state_dir(node.name), exist_ok=True)
    node.pid = spawn(["ip", "netns", "exec", node.ns, *run_argv(lab, node)], lab.log_file(node.name),
                     cwd=lab.node_dir(node.name))
    return node.pid


def running(lab: Lab, node: Node) -> bool:
    return alive(node.pid, marker(lab, node))


def log_tail(lab: Lab, node: str, lines: int = 5) -> str:
    try:
        with open(lab.log_file(node), encoding="utf-8", errors="replace") as f:
            text = [render_log_line(line) or "" for line in f if line.strip()]
        return "\n".join(text[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"


def read_subnet(lab: Lab, node: Node) -> str:
    """The node's lease (subnet network, e.g. 10.244.29.0/24) from its subnet.env, or "" while it has none."""
    try:
        env = load_subnet_env(lab.subnet_env(node.name))
    except SubnetEnvError:
        return ""
    return str(env.subnets[0]) if env.subnets else ""


def wait_leases(lab: Lab, nodes: list[Node], timeout: float) -> None:
    """Wait until every node has written subnet.env; fail early if a daemon dies."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    next_alive_check = 0.0
    while pending:
        # Whether a daemon died is asked every 0.5 s, subnet.env every 0.05 s: a death is
        # still reported at once, and 100 nodes' checks stay off the CPU the daemons need.
        alive_check = time.monotonic() >= next_alive_check
        if alive_check:
            next_alive_check = time.monotonic() + 0.5
        for node in list(pending):
            node.subnet = read_subnet(lab, node)
            if node.subnet:
                pending.remove(node)
            elif alive_check and not running(lab, node):
                raise LabError(f"flannel-ext on node {node.name} exited before writing subnet.env; "
                               f"its log ({lab.log_file(node.name)}) ends:\n{log_tail(lab, node.name)}")
        if pending and time.monotonic() > deadline:
            raise LabError(f"no lease after {timeout:g}s on {', '.join(n.name for n in pending)}; "
                           f"see `flannel-ext lab logs --name {lab.name} {pending[0].name}`")
        if pending:
            time.sleep(0.05)


def read_stats(lab: Lab, node: str) -> dict | None:
    try:
        with open(os.path.join(lab.state_dir(node), "stats.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def missing_routes(lab: Lab, nodes: list[Node] | None = None, gone: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """node -> the other nodes' subnets it has no kernel route to (main table), and the
    subnets in `gone` it still routes (as ``stale <subnet>``): one `ip route` per node."""
    nodes = list(lab.nodes.values()) if nodes is None else nodes
    subnets = {n.name: n.subnet for n in lab.nodes.values() if n.subnet}
    wrong = {}
    for node in nodes:
        have = {r.get("dst") for r in ip_json(node.ns, "route", "show")}
        lack = [s for name, s in subnets.items() if name != node.name and s not in have]
        lack += [f"stale {s}" for s in sorted(have & set(gone))]
        if lack:
            wrong[node.name] = lack
    return wrong


def wait_routes(lab: Lab, timeout: float, gone: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Wait until every node routes to every other subnet and to none in `gone`.

    Returns what is still wrong at the deadline (empty when converged); the caller decides
    whether that is fatal, since the matrix that follows says more than a timeout does.
    """
    deadline = time.monotonic() + timeout
    while True:
        wrong = missing_routes(lab, gone=gone)
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(0.05)


def render_log_line(line: str, hooks_only: bool = False) -> str | None:
    """A daemon JSON log line as text (other lines as they are); None when filtered out."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None if hooks_only else line.rstrip("\n")
    if not isinstance(doc, dict):
        return line.rstrip("\n")
    if hooks_only and "hook" not in doc:
        return None
    ts = doc.get("ts")
    when = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}" if ts else "-"
    text = f"{when} {str(doc.get('level', '')).upper()[:1]} {doc.get('logger', '')}: {doc.get('msg', '')}"
    return text + ("\n" + doc["exc"] if doc.get("exc") else "")
