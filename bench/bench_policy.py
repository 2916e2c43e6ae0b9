"""Network policy figures: ruleset build and update at scale, and the data path cost.

A synthetic cluster of 1,000 pods in 20 namespaces, all on the measured node (the worst
case for one node's ruleset), and 200 NetworkPolicies (10 per namespace: pod and namespace
selectors, named and numeric ports, an ipBlock with except, and egress on a quarter).

* control plane: compute the node's state, build the full nftables ruleset (one `nft -f`),
  then apply one pod's label change incrementally, with the `nft` binary and with
  libnftables in-process inside the node namespace (as the daemon does); baseline: `nft -f`
  of an empty table;
* data path: new TCP connections per second between two real pods (namespaces, veths,
  a `cni0` bridge in a node namespace) with no policy, with conntrack alone (what any
  stateful policy costs), with the 200 policies loaded (sets + verdict maps), and with a
  naive ruleset of one rule per allowed (peer, pod, ports) pair.
  The three are measured in alternation, several rounds, and compared by median.

Everything lives in namespaces named ``bpol<pid>-*`` that are always removed:

    sudo python3 bench/bench_policy.py [--seconds 2] [--rounds 3] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flannel_ext._policy.compute import Cluster, PolicyComputer, compute_state
from flannel_ext._policy.nftables import NftablesPolicy, build_ruleset, render_full
from flannel_ext._policy.state import EGRESS, INGRESS, PolicyState
from flannel_ext._util.netns import create_netns, delete_netns, sh
from pyroute2.netns import popns, pushns

NODE = "n1"
PREFIX = f"bpol{os.getpid()}-"
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 8080)); s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""
CLIENT = """
import socket, struct, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2])
linger = struct.pack("ii", 1, 0)   # RST on close: no TIME_WAIT to run out of ports
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(2)
    s.connect((ip, 8080)); s.close(); n += 1
print(n / seconds)
"""


def pod_ip(i: int) -> str:
    return f"10.244.{i // 250}.{i % 250 + 2}"


def cluster_objects(generation: int = 1, relabel: dict | None = None) -> Cluster:
    namespaces = [{"metadata": {"name": f"ns-{n}", "labels": {"team": f"t{n % 4}", "env": ["prod", "dev"][n % 2]}}}
                  for n in range(20)]
    pods = []
    for i in range(1000):
        ns, j = divmod(i, 50)
        labels = {"app": f"app-{j % 10}", "tier": ("web", "db", "cache")[j % 3], "version": f"v{j % 2}"}
        labels.update((relabel or {}).get(i, {}))
        pods.append({"metadata": {"name": f"pod-{j}", "namespace": f"ns-{ns}", "labels": labels},
                     "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [
                         {"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"},
                         {"containerPort": 53, "name": "dns", "protocol": "UDP"}]}]},
                     "status": {"podIP": pod_ip(i)}})
    policies = []
    for n in range(20):
        for k in range(10):
            spec: dict = {"podSelector": {"matchLabels": {"app": f"app-{k}"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
                 "ports": [{"port": "http"}, {"port": 9090}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{k % 4}"}},
                           "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                                                 "values": ["web", "cache"]}]}}],
                 "ports": [{"port": 8000, "endPort": 8100}]},
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}],
                 "ports": [{"port": 443}]}]}
            if k % 4 == 0:
                spec["egress"] = [{"to": [{"namespaceSelector": {}}],
                                   "ports": [{"port": 53, "protocol": "UDP"}, {"port": "http"}]}]
            policies.append({"metadata": {"name": f"pol-{k}", "namespace": f"ns-{n}"}, "spec": spec})
    return Cluster.from_objects(generation, namespaces, pods, policies)


def naive_script(state: PolicyState, table: str) -> tuple[str, int]:
    """One rule per allowed (peer address or block, pod, protocol/ports) triple, in one chain per
    direction, walked linearly: what a rule-per-pair implementation loads."""
    lines = [f"add table inet {table}", f"delete table inet {table}", f"add table inet {table}",
             f"add chain inet {table} egress", f"add chain inet {table} ingress"]
    count = 0
    for direction, chain, verdict in ((EGRESS, "egress", "return"), (INGRESS, "ingress", "accept")):
        me, peer = ("saddr", "daddr") if direction == EGRESS else ("daddr", "saddr")
        isolated = []
        for pod in state.pods.values():
            allows = pod.allows(direction)
            if allows is None:
                continue
            isolated.append(pod.ip)
            for allow in allows:
                rule = state.rules[allow.rule]
                peers = [None] if rule.any else list(rule.cidrs)
                ports = [""] if allow.ports is None else [
                    f"meta l4proto {p.protocol.lower()}" + ("" if p.first is None else f" th dport {p.first}-{p.last}")
                    for p in allow.ports]
                for addr in peers:
                    for port in ports:
                        match = f"ip {me} {pod.ip}" + (f" ip {peer} {addr}" if addr else "")
                        lines.append(f"add rule inet {table} {chain} {match} {port} {verdict}")
                        count += 1
                for ip, proto, number in rule.named:
                    lines.append(f"add rule inet {table} {chain} ip {me} {pod.ip} ip {peer} {ip} "
                                 f"meta l4proto {proto.lower()} th dport {number} {verdict}")
                    count += 1
        for start in range(0, len(isolated), 500):
            lines.append(f"add rule inet {table} {chain} ip {me} {{ {', '.join(isolated[start:start + 500])} }} drop")
    lines += [f"add chain inet {table} forward {{ type filter hook forward priority filter; policy accept; }}",
              f"add rule inet {table} forward ct state established,related accept",
              f"add rule inet {table} forward jump egress", f"add rule inet {table} forward jump ingress"]
    return "\n".join(lines) + "\n", count


def _rule_count(state: PolicyState) -> int:
    return sum(len(rules) for rules in build_ruleset(state).chains.values()) + 4


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def label_changes(hook: NftablesPolicy, how: str, record) -> None:
    """One pod's label change, as the agent handles it: incremental compute, then update."""
    for what, relabel in (("peer label change (tier web→db)", {0: {"tier": "db"}}),
                          ("target label change (app-0→app-1)", {0: {"app": "app-1"}})):
        computer = PolicyComputer(NODE)   # as the agent keeps one: the base state first
        base = computer.compute(cluster_objects())
        hook.apply(base)
        changed = cluster_objects(2, relabel)   # the source's next snapshot (parse not timed)
        t_state, new = timed(lambda c=changed, pc=computer: pc.compute(c))
        t_apply, _ = timed(lambda n=new, b=base: hook.update(b, n))
        record(f"{what}: compute (incremental)", t_state)
        record(f"{what}: diff + {how}", t_apply)
        record(f"{what}: total, {how}", t_state + t_apply)


def control_plane(node_ns: str, repeat: int) -> list[tuple[str, float]]:
    """Each step `repeat` times; the median is reported (the machine is shared)."""
    hook = NftablesPolicy(netns=node_ns)
    samples: dict[str, list[float]] = {}

    def record(what: str, secs: float) -> None:
        samples.setdefault(what, []).append(secs)

    for _ in range(repeat):
        record("baseline: `nft -f` of an empty table", timed(lambda: hook.run_nft(
            "add table inet empty\ndelete table inet empty\ntable inet empty {}\n"))[0])
        t_parse, cluster = timed(cluster_objects)
        record("parse 1,000 pods + 200 policies", t_parse)
        t_compute, state = timed(lambda c=cluster: compute_state(c, NODE))
        record("compute the node's state (from scratch)", t_compute)
        record("render the full ruleset", timed(lambda s=state: render_full(build_ruleset(s)))[0])
        t_full = timed(lambda s=state: hook.apply(s))[0]
        record("full build: render + one `nft -f` transaction", t_full)
        record("full build: compute + render + `nft -f`", t_compute + t_full)
        label_changes(hook, "`nft -f`", record)
        # The daemon runs inside its node namespace and uses libnftables in-process: do the same.
        pushns(node_ns)
        try:
            in_ns = NftablesPolicy()
            assert in_ns.lib is not None, "libnftables.so.1 not loadable"
            record("full build: render + libnftables (in-process)", timed(lambda s=state: in_ns.apply(s))[0])
            label_changes(in_ns, "libnftables", record)
        finally:
            popns()
    script = render_full(build_ruleset(state))
    print(f"full ruleset: {script.count(chr(10))} nft lines, {len(build_ruleset(state).sets)} sets, "
          f"{len(build_ruleset(state).chains)} pod chains", file=sys.stderr)
    hook.clear()
    return [(what, statistics.median(values)) for what, values in samples.items()]


CLIENT_POD, SERVER_POD = 998, 999   # the last pods, so a rule-per-pair ruleset walks them last


def make_pods(node_ns: str) -> tuple[str, str, subprocess.Popen]:
    """Two pods on cni0 of the node namespace: client ns-19/pod-48 (tier web, app-8) and
    server ns-19/pod-49 (app-9), which policy ns-19/pol-9 lets web pods reach on http."""
    sh(["ip", "-n", node_ns, "link", "add", "cni0", "type", "bridge"])
    sh(["ip", "-n", node_ns, "addr", "add", "10.244.0.1/22", "dev", "cni0"])
    sh(["ip", "-n", node_ns, "link", "set", "cni0", "up"])
    names = []
    for index in (CLIENT_POD, SERVER_POD):
        pod = create_netns(f"{PREFIX}pod{index}")
        sh(["ip", "-n", node_ns, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", pod])
        sh(["ip", "-n", node_ns, "link", "set", f"v{index}", "master", "cni0", "up"])
        sh(["ip", "-n", pod, "addr", "add", f"{pod_ip(index)}/22", "dev", "eth0"])
        sh(["ip", "-n", pod, "link", "set", "eth0", "up"])
        sh(["ip", "-n", pod, "route", "add", "default", "via", "10.244.0.1"])
        names.append(pod)
    server = subprocess.Popen(["ip", "netns", "exec", names[1], sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return names[0], names[1], server


def rate(client_ns: str, seconds: float) -> float:
    out = sh(["ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT, pod_ip(SERVER_POD), str(seconds)],
             timeout=seconds + 60).stdout
    return float(out.strip())


def data_path(node_ns: str, seconds: float, rounds: int) -> list[tuple[str, float, int]]:
    client_ns, _, server = make_pods(node_ns)
    try:
        state = compute_state(cluster_objects(), NODE)
        assert state.allows(EGRESS, pod_ip(CLIENT_POD), pod_ip(SERVER_POD), "TCP", 8080)
        assert state.allows(INGRESS, pod_ip(SERVER_POD), pod_ip(CLIENT_POD), "TCP", 8080)
        hook = NftablesPolicy(netns=node_ns)
        naive, naive_rules = naive_script(state, "naive")
        conntrack_only = ("add table inet naive\nadd chain inet naive forward { type filter hook forward "
                          "priority filter; policy accept; }\n"
                          "add rule inet naive forward ct state established,related accept\n")
        configs = {"no policy (baseline)": (lambda: None, 0),
                   "conntrack only (one `ct state` rule)": (lambda: hook.run_nft(conntrack_only), 1),
                   "200 policies: sets + verdict maps": (lambda: hook.apply(state), _rule_count(state)),
                   "200 policies: naive rule per pair": (lambda: hook.run_nft(naive), naive_rules)}
        results: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(rounds):
            for name, (load, _) in configs.items():
                load()
                results[name].append(rate(client_ns, seconds))
                hook.run_nft("table inet naive {}\ndelete table inet naive\n")
                hook.clear()
        return [(name, statistics.median(results[name]), configs[name][1]) for name in configs]
    finally:
        server.kill()
        server.wait()
        if server.stdout:
            server.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per data-path measurement")
    parser.add_argument("--rounds", type=int, default=3, help="data-path rounds")
    parser.add_argument("--repeat", type=int, default=5, help="control-plane repetitions")
    args = parser.parse_args()
    node_ns = create_netns(f"{PREFIX}node")
    try:
        sh(["ip", "netns", "exec", node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        rows = control_plane(node_ns, args.repeat)
        base = rows[0][1]
        print(f"| step (median of {args.repeat}) | ms | × `nft -f` floor |\n|---|---:|---:|")
        for what, secs in rows:
            print(f"| {what} | {secs * 1000:.1f} | {secs / base:.1f} |")
        print()
        flows = data_path(node_ns, args.seconds, args.rounds)
        print(f"| ruleset | new TCP connections/s (median of {args.rounds}) | rules in the ruleset | × no policy |")
        print("|---|---:|---:|---:|")
        for name, value, rules in flows:
            print(f"| {name} | {value:.0f} | {rules} | {value / flows[0][1]:.2f} |")
    finally:
        for name in (f"{PREFIX}pod{CLIENT_POD}", f"{PREFIX}pod{SERVER_POD}", node_ns):
            delete_netns(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
