"""`lab check`: the all-pairs connectivity matrix, and a hint for every failing pair.

A hint reads the kernel of both nodes (``ip -j route``, ``ip -j neigh``, ``bridge -j fdb``,
``ip -j -d link``) and names the first thing missing on the path to the destination
subnet and back: a route, a vxlan neighbour (VTEP MAC), or an FDB entry (VTEP MAC →
underlay IP). It knows flannel's two dataplanes; anything else gets "looks complete".
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from flannel_ext._util.netns import ip_json, sh
from flannel_ext._lab import cluster, kernel
from flannel_ext._lab.pods import PORT, listener_alive
from flannel_ext._lab.probe import Target, probe
from flannel_ext._lab.state import Lab, Node


@dataclass
class Report:
    pods: list[str]
    results: dict          # (src, dst) -> probe.Result
    hints: dict            # (src, dst) -> [str]
    icmp: bool

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [k for k, r in self.results.items() if not r.tcp or r.icmp is False]

    @property
    def ok(self) -> bool:
        return not self.failed


class _Kernel:
    """A cached view of one node's routes, neighbours, FDB and links."""

    def __init__(self, node: Node):
        self.node = node
        self.routes = ip_json(node.ns, "route", "show")
        self.neigh = ip_json(node.ns, "neigh", "show")
        self.links = {link["ifname"]: link for link in ip_json(node.ns, "-d", "link", "show")}
        try:
            self.fdb = json.loads(sh(["bridge", "-n", node.ns, "-j", "fdb", "show"], check=False).stdout or "[]")
        except ValueError:
            self.fdb = []

    def kind(self, dev: str) -> str:
        return self.links.get(dev, {}).get("linkinfo", {}).get("info_kind", "")


def diagnose(src: _Kernel, dst: _Kernel) -> list[str]:
    """What `src` lacks to reach pods on `dst` (empty when the path looks complete)."""
    s, d = src.node, dst.node
    route = next((r for r in src.routes if r.get("dst") == d.subnet), None)
    if route is None:
        return [f"{s.name} has no route to {d.subnet} ({d.name}); expected via {d.ip} "
                f"(host-gw) or via a vxlan device (vxlan)"]
    gw, dev = route.get("gateway"), route.get("dev", "")
    if src.kind(dev) != "vxlan":
        if gw and gw != d.ip:
            return [f"{s.name}'s route to {d.subnet} goes via {gw}, but {d.name} is {d.ip}"]
        return []
    neigh = next((n for n in src.neigh if n.get("dst") == gw and n.get("dev") == dev), None)
    mac = (neigh or {}).get("lladdr")
    if not mac:
        return [f"{s.name} has no neighbour entry for {gw} on {dev} (VTEP MAC of {d.name})"]
    peer_mac = dst.links.get(dev, {}).get("address")
    if peer_mac and peer_mac != mac:
        return [f"{s.name}'s neighbour {gw} on {dev} has {mac}, but {d.name}'s {dev} is {peer_mac}"]
    fdb = [f for f in src.fdb if f.get("mac") == mac and f.get("ifname") == dev and f.get("dst")]
    if not fdb:
        return [f"{s.name} has no FDB entry {mac} dst {d.ip} on {dev}"]
    if all(f["dst"] != d.ip for f in fdb):
        return [f"{s.name}'s FDB entry {mac} on {dev} points at {fdb[0]['dst']}, but {d.name} is {d.ip}"]
    return []


def run_check(lab: Lab, timeout: float = 3.0, icmp: bool = True) -> Report:
    pairs = lab.pods()
    targets = [Target(p.name, p.ip) for _, p in pairs]
    tables = kernel.tables()
    results = probe(targets, PORT, timeout=timeout, icmp=icmp) if len(targets) > 1 else {}
    report = Report([t.name for t in targets], results, {}, icmp)
    if report.failed:
        owner = {p.name: n for n, p in pairs}
        pods = {p.name: p for _, p in pairs}
        kernels = {n.name: _Kernel(n) for n in lab.nodes.values()}
        policies = len(cluster.load(lab)["networkpolicies"]) if lab.policy else 0
        full_table = kernel.full_table_hint(tables)
        for src, dst in report.failed:
            a, b = owner[src], owner[dst]
            hints = [full_table] if full_table else []
            if not listener_alive(pods[dst]):
                hints.append(f"the listener in {dst} is not running (pid {pods[dst].listener_pid})")
            if a.name == b.name:
                hints.append(f"same node: check cni0 in {a.ns} (`ip netns exec {a.ns} bridge link`)")
            else:
                hints += diagnose(kernels[a.name], kernels[b.name])
                hints += [f"return path: {h}" for h in diagnose(kernels[b.name], kernels[a.name])]
            if policies:  # the likeliest cause once policies exist: say it first
                hints.insert(0, f"{policies} NetworkPolicies are in force and may block it; "
                             f"`flannel-ext lab check --name {lab.name} --port {PORT}` shows the table")
            if not hints:
                hints.append(f"routes, neighbours and FDB look complete; see `flannel-ext lab logs "
                             f"--name {lab.name} {a.name}` (and {b.name})")
            report.hints[(src, dst)] = hints
    return report


def _cell(r) -> str:
    if r.tcp and r.icmp is not False:
        return "ok"
    if r.tcp:
        return "i"   # TCP fine, ICMP lost
    return "X" if r.icmp is not True else "t"  # t: ICMP fine, TCP failed


def format_text(report: Report) -> str:
    names = report.pods
    width = max((len(n) for n in names), default=4)
    lines = ["connectivity: TCP" + (" + ICMP" if report.icmp else "") +
             f", {len(names)} pods, {len(report.results)} pairs",
             " " * (width + 4) + "".join(f"{i + 1:>3}" for i in range(len(names)))]
    for i, src in enumerate(names):
        cells = ["  -" if src == dst else f"{_cell(report.results[(src, dst)]):>3}" for dst in names]
        lines.append(f"{i + 1:>3} {src:<{width}}" + "".join(cells))
    for src, dst in report.failed:
        r = report.results[(src, dst)]
        what = f"tcp: {r.error}" if not r.tcp else "tcp ok"
        if report.icmp:
            what += ", icmp: " + ("ok" if r.icmp else "no reply")
        lines.append(f"FAIL {src} -> {dst} ({what})")
        lines += [f"     hint: {h}" for h in report.hints.get((src, dst), [])]
    total, bad = len(report.results), len(report.failed)
    lines.append(f"{total - bad}/{total} pairs ok" + (f", {bad} failed" if bad else "") +
                 ("  (ok: tcp+icmp, i: icmp lost, t: tcp failed, X: both)" if bad else ""))
    return "\n".join(lines)


def to_json(report: Report) -> dict:
    pairs = [{"src": s, "dst": d, "tcp": r.tcp, "icmp": r.icmp, "ok": (s, d) not in report.failed,
              "error": r.error, "hints": report.hints.get((s, d), [])}
             for (s, d), r in report.results.items()]
    return {"ok": report.ok, "pods": report.pods, "pairs": pairs,
            "summary": {"pairs": len(pairs), "failed": len(report.failed)}}
