"""The lab's commands as functions: up, add_node, rm_node, down, status rows, log lines.

Each step prints one progress line with its duration (through `out`, so tests and the
bench can capture it). Every command that changes a lab holds its lock and saves the
record after each step, so `down` always knows what a half-finished `up` left behind.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
import time
from collections.abc import Callable

from flannel_ext._util.netns import sh
from flannel_ext._lab import check, cluster, daemons, kernel, pods, topology
from flannel_ext._lab.state import Lab, LabError, check_name, exists, lab_dir, locked, remove_dir

Out = Callable[[str], None]


class _Steps:
    def __init__(self, total: int, out: Out):
        self.total, self.out, self.n, self.t0 = total, out, 0, time.monotonic()

    def run(self, label: str, fn: Callable[[], str]):
        self.n += 1
        start = time.monotonic()
        detail = fn()
        self.out(f"[{self.n}/{self.total}] {label:<8} {detail:<56} {time.monotonic() - start:6.2f}s")

    def done(self, what: str) -> None:
        self.out(f"{what} in {time.monotonic() - self.t0:.2f}s")


def _preflight(name: str, net_conf: str, cni_path: str) -> str:
    check_name("lab", name)
    if exists(name):
        raise LabError(f"lab {name!r} already exists ({lab_dir(name)}); "
                       f"`flannel-ext lab down --name {name}` first")
    if topology.lab_namespaces(name):
        raise LabError(f"namespaces {name}-* are left from an earlier lab; "
                       f"`flannel-ext lab down --name {name}` removes them")
    if not os.path.isfile(net_conf):
        raise LabError(f"--net-conf {net_conf}: no such file")
    for plugin in ("bridge", "host-local"):
        if not any(os.access(os.path.join(d, plugin), os.X_OK) for d in cni_path.split(":") if d):
            raise LabError(f"CNI plugin {plugin!r} not found in {cni_path}; "
                           "install Debian's containernetworking-plugins or pass --cni-path")
    return os.path.abspath(net_conf)


def up(name: str, nodes: int, pods_per_node: int, net_conf: str, *, store: str | None = None,
       underlay_cidr: str = "192.168.100.0/24", cni_path: str = "/usr/lib/cni", watch: bool = True,
       timeout: float = 60.0, pods_file: str | None = None, policy: str = "",
       out: Out = print, tune_kernel: bool = False) -> check.Report:
    if nodes < 1 or pods_per_node < 0:
        raise LabError("--nodes must be at least 1 and --pods-per-node at least 0")
    net_conf = _preflight(name, net_conf, cni_path)
    namespaces, specs = (cluster.read_pods_file(pods_file, [f"n{i}" for i in range(1, nodes + 1)])
                         if pods_file else ({}, []))
    busiest = max(collections.Counter(spec.node for spec in specs).values(), default=0)
    fit = kernel.check_fits(nodes, busiest if pods_file else pods_per_node, net_conf, tune_kernel,
                            policy=bool(policy))
    with locked(name):
        lab = Lab(name=name, net_conf=net_conf, store=store or f"sqlite:{lab_dir(name)}/store.db",
                  underlay_cidr=underlay_cidr, cni_path=cni_path,
                  pods_per_node=0 if pods_file else pods_per_node, watch=watch, policy=policy)
        lab.save()
        # The agents read it from their start; the pods arrive with their IPs later.
        cluster.save(lab, {"namespaces": [cluster.namespace_object(n, labels) for n, labels in namespaces.items()],
                           "pods": [], "networkpolicies": []})
        kernel.tune_for(lab, fit, out)
        steps = _Steps(6, out)
        try:
            report = _up_steps(lab, steps, nodes, lab.pods_per_node, timeout, specs, pods_file)
        except BaseException:
            out(f"lab {name} left as it is for inspection; `flannel-ext lab down --name {name}` removes it")
            raise
        steps.done(f"lab {name} up" + ("" if report.ok else " with failures"))
    out(check.format_text(report))
    return report


def _up_steps(lab: Lab, steps: _Steps, nodes: int, pods_per_node: int, timeout: float,
              specs: list[cluster.PodSpec], pods_file: str | None) -> check.Report:
    def make_nodes():
        topology.create_hub(lab)
        for i in range(1, nodes + 1):
            topology.add_node(lab, f"n{i}")
            lab.save()
        return f"{nodes} node namespaces + {lab.name}-hub on {lab.underlay_cidr}"
    steps.run("nodes", make_nodes)
    steps.run("daemons", lambda: _start_daemons(lab, list(lab.nodes.values())))
    steps.run("leases", lambda: _wait_leases(lab, list(lab.nodes.values()), timeout))
    steps.run("pods", lambda: _add_pods(lab, list(lab.nodes.values()), pods_per_node, timeout,
                                        specs, pods_file))
    steps.run("routes", lambda: _wait_routes(lab, timeout))
    return _matrix(lab, steps)


def _start_daemons(lab: Lab, nodes) -> str:
    for node in nodes:
        daemons.start(lab, node)
    lab.save()
    pids = ", ".join(str(n.pid) for n in nodes)
    return f"{len(nodes)} x flannel-ext run --watch, pid {pids}"[:56] if lab.watch else \
        f"{len(nodes)} x flannel-ext run, pid {pids}"[:56]


def _wait_leases(lab: Lab, nodes, timeout: float) -> str:
    daemons.wait_leases(lab, nodes, timeout)
    lab.save()
    return " ".join(f"{n.name}={n.subnet}" for n in nodes)[:56]


def _add_pods(lab: Lab, nodes, per_node: int, timeout: float,
              specs: list[cluster.PodSpec] | None = None, pods_file: str | None = None) -> str:
    try:
        made = pods.add_spec_pods(lab, specs) if specs else pods.add_pods(lab, nodes, per_node)
    finally:
        lab.save()
    what = f"from {os.path.basename(pods_file)}" if pods_file else f"({per_node} per node)"
    labels = {(s.namespace, s.name): s.labels for s in specs or []}
    return f"{len(made)} pods via flannel-ext-cni {what}" + _sync_cluster(lab, timeout, labels)


def _sync_cluster(lab: Lab, timeout: float, labels=None) -> str:
    """Write the lab's pods into cluster.json; with policy agents, wait until all apply it."""
    doc = cluster.load(lab)
    cluster.sync_pods(lab, doc, labels=labels)
    generation = cluster.save(lab, doc)
    if not lab.policy:
        return ""
    cluster.wait_generation(lab, generation, timeout, lambda n: daemons.running(lab, n))
    return f", policy gen {generation}"


def _wait_routes(lab: Lab, timeout: float, gone: tuple[str, ...] = ()) -> str:
    wrong = daemons.wait_routes(lab, timeout, gone)
    n = len(lab.nodes)
    if wrong:
        return "NOT converged: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in wrong.items())[:40]
    return f"every node routes to the other {n - 1} subnet(s)" + (f", none to {', '.join(gone)}" if gone else "")


def _matrix(lab: Lab, steps: _Steps) -> check.Report:
    box = {}

    def run():
        box["r"] = check.run_check(lab)
        return f"{len(box['r'].results) - len(box['r'].failed)}/{len(box['r'].results)} pod pairs ok"
    steps.run("matrix", run)
    return box["r"]


def add_node(name: str, node_name: str | None = None, pods_per_node: int | None = None, *,
             timeout: float = 60.0, out: Out = print) -> check.Report:
    with locked(name):
        lab = Lab.load(name)
        node_name = node_name or f"n{max((int(n[1:]) for n in lab.nodes if n[1:].isdigit()), default=0) + 1}"
        per_node = lab.pods_per_node if pods_per_node is None else pods_per_node
        steps = _Steps(6, out)
        holder = {}

        def make():
            holder["n"] = topology.add_node(lab, node_name)
            lab.save()
            return f"{holder['n'].ns} at {holder['n'].ip}"
        steps.run("node", make)
        node = holder["n"]
        steps.run("daemon", lambda: _start_daemons(lab, [node]))
        steps.run("lease", lambda: _wait_leases(lab, [node], timeout))
        steps.run("pods", lambda: _add_pods(lab, [node], per_node, timeout))
        steps.run("routes", lambda: _wait_routes(lab, timeout))
        report = _matrix(lab, steps)
        steps.done(f"node {node_name} added")
    out(check.format_text(report))
    return report


def rm_node(name: str, node_name: str, *, timeout: float = 30.0, out: Out = print) -> None:
    """Gracefully: pods deleted, SIGTERM (Shutdown runs, lease released), namespace gone."""
    with locked(name):
        lab = Lab.load(name)
        if node_name not in lab.nodes:
            raise LabError(f"lab {name!r} has no node {node_name!r} (nodes: {', '.join(lab.nodes)})")
        node = lab.nodes[node_name]
        steps = _Steps(4, out)

        def del_pods():
            count = len(node.pods)
            try:
                pods.remove_pods(lab, node)
            finally:
                lab.save()
            return f"{count} pods deleted via CNI DEL" + _sync_cluster(lab, timeout)
        steps.run("pods", del_pods)

        def stop():
            left = topology.terminate([(node.pid, daemons.marker(lab, node))], grace=timeout)
            return f"SIGTERM pid {node.pid}: " + ("killed after timeout" if left else "exited (lease released)")
        steps.run("daemon", stop)

        def remove():
            topology.delete_namespaces([node.ns])
            del lab.nodes[node_name]
            lab.save()
            shutil.rmtree(lab.node_dir(node_name), ignore_errors=True)
            return f"{node.ns} deleted"
        steps.run("node", remove)
        gone = (node.subnet,) if node.subnet else ()
        steps.run("routes", lambda: _wait_routes(lab, timeout, gone))
        steps.done(f"node {node_name} removed")


def down(name: str, out: Out = print) -> int:
    """Remove everything lab `name` made; idempotent, needs no daemon to cooperate."""
    check_name("lab", name)
    start = time.monotonic()
    procs = []
    try:
        lab = Lab.load(name)
        for node in lab.nodes.values():
            procs.append((node.pid, daemons.marker(lab, node)))
            procs += [(p.listener_pid, p.name) for p in node.pods.values()]
    except LabError:
        lab = None  # no (readable) record: the namespaces still say what to remove
    killed = set(topology.kill(procs))
    names = topology.lab_namespaces(name)
    killed |= _kill_namespace_pids(names)
    topology.delete_namespaces(names)
    kernel.untune(lab, out)
    had_dir = os.path.isdir(lab_dir(name))
    remove_dir(name)
    if not (killed or names or had_dir):
        out(f"lab {name}: nothing to remove")
        return 0
    out(f"lab {name} down: {len(killed)} processes, {len(names)} namespaces"
        f"{', ' + lab_dir(name) if had_dir else ''} removed in {time.monotonic() - start:.2f}s")
    return 0


def _kill_namespace_pids(names: list[str]) -> set[int]:
    """SIGKILL every process inside the lab's namespaces until none is left (forks race)."""
    killed: set[int] = set()
    for _ in range(20):
        pids = {int(p) for ns in names for p in sh(["ip", "netns", "pids", ns], check=False).stdout.split()}
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def status_rows(lab: Lab) -> list[dict]:
    rows = []
    for node in lab.nodes.values():
        stats = daemons.read_stats(lab, node.name) or {}
        rows.append({
            "node": node.name, "ns": node.ns, "ip": node.ip,
            "subnet": node.subnet or daemons.read_subnet(lab, node), "pid": node.pid,
            "running": daemons.running(lab, node), "ready": bool(stats.get("ready")),
            "leases_known": stats.get("leases_known", 0),
            "hook_calls": sum((stats.get("hook_calls") or {}).values()),
            "hook_failures": sum((stats.get("hook_failures") or {}).values()),
            "rejected": sum((stats.get("rejected") or {}).values()),
            "state_error": stats.get("state_write_error", ""),
            "pods": {p.name: p.ip for p in node.pods.values()},
            "policy": cluster.read_status(lab, node.name),
        })
    return rows


def format_status(lab: Lab, rows: list[dict]) -> str:
    lines = [f"lab {lab.name}: {len(rows)} nodes, net-conf {lab.net_conf}, store {lab.store}, "
             f"underlay {lab.underlay_cidr}, dir {lab.dir}",
             f"{'NODE':<8} {'IP':<15} {'SUBNET':<18} {'PID':>7} {'STATE':<8} {'LEASES':>6} "
             f"{'HOOKS':>6} {'FAILED':>6} {'REJECTED':>8}  PODS"]
    for r in rows:
        state = ("ready" if r["ready"] else "starting") if r["running"] else "DEAD"
        lines.append(f"{r['node']:<8} {r['ip']:<15} {r['subnet'] or '-':<18} {r['pid']:>7} {state:<8} "
                     f"{r['leases_known']:>6} {r['hook_calls']:>6} {r['hook_failures']:>6} "
                     f"{r['rejected']:>8}  " + " ".join(f"{k.rsplit('-', 1)[1]}={v}" for k, v in r["pods"].items()))
        if r.get("state_error"):
            lines.append(f"  {r['node']}: {r['state_error']}")
    return "\n".join(lines)
