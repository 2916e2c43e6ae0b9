"""`flannel-ext lab`: a multi-node cluster in namespaces on this machine (Documentation/lab.md).

Subcommands: up, check, apply, delete, add-node, rm-node, status, logs, down. Each takes ``--name``
(default ``lab``) so several labs can live side by side.
"""
from __future__ import annotations

import json
import sys
import time

from flannel_ext._lab.state import Lab, LabError, list_labs, locked

# `check` and `ops` (ctypes, subprocess pools) are imported by the handlers, so that
# `flannel-ext` with any other subcommand, e.g. every node's `run`, does not pay for them.


def register(subparsers) -> None:
    lab = subparsers.add_parser(
        "lab", help="a multi-node cluster in network namespaces, for seconds-long iterations",
        description="Nodes are namespaces on a shared underlay, each running `flannel-ext run` "
                    "against one store; pods are made through CNI; a matrix checks every pair.")
    sub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    lab.set_defaults(func=lambda args: (lab.print_help(), 2)[1])

    def parser(name, help, func):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--name", default="lab", help="lab name (a-z0-9_; default %(default)s)")
        p.set_defaults(func=func)
        return p

    p = parser("up", "create nodes, start daemons, make pods, print the matrix", _up)
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default %(default)s)")
    p.add_argument("--pods-per-node", type=int, default=2, help="default %(default)s")
    p.add_argument("--net-conf", required=True, metavar="FILE",
                   help="net-conf.json, e.g. recipes/vxlan.json; edits are hot-reloaded")
    p.add_argument("--store", default=None, metavar="URL",
                   help="lease store (default sqlite: in the lab directory)")
    p.add_argument("--underlay-cidr", default="192.168.100.0/24", help="default %(default)s")
    p.add_argument("--cni-path", default="/usr/lib/cni", help="CNI_PATH for the delegate plugins")
    p.add_argument("--no-watch", dest="watch", action="store_false",
                   help="run the daemons without --watch (no hot reload)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per waiting step")
    p.add_argument("--pods", metavar="FILE", dest="pods_file",
                   help="multi-document YAML of v1 Namespace and Pod objects (spec.nodeName n1, n2, ...) "
                        "instead of --pods-per-node; each pod serves its declared containerPorts")
    p.add_argument("--policy", default="nftables", metavar="HOOK",
                   help="the nodes' network-policy hook (default %(default)s), fed from cluster.json")
    p.add_argument("--no-policy", dest="policy", action="store_const", const="",
                   help="run the daemons without a policy agent")
    p.add_argument("--tune-kernel", action="store_true",
                   help="raise the neighbour-table limits (gc_thresh*) if the lab needs it; `lab down` "
                        "restores them")

    p = parser("check", "all-pairs pod-to-pod connectivity (TCP + ICMP), or one port's truth table", _check)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-icmp", dest="icmp", action="store_false", help="TCP only")
    p.add_argument("--port", type=int, metavar="P",
                   help="probe this port of every pod and print the reachability truth table")
    p.add_argument("--protocol", default="TCP", type=str.upper, choices=("TCP", "UDP", "SCTP"),
                   help="with --port (default %(default)s)")
    p.add_argument("--expect", metavar="FILE",
                   help="with --port: the expected table (text or --json form); exit 1 on any difference")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per probe round (default 3, with --port 1)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="repeat until every pair passes (with --port: until the table is stable "
                        "and matches --expect) or this long has passed")

    p = parser("add-node", "add a node (daemon, pods) and print the matrix", _add_node)
    p.add_argument("node", nargs="?", help="node name (default n<next>)")
    p.add_argument("--pods", type=int, default=None, help="pods on it (default: the lab's)")
    p.add_argument("--timeout", type=float, default=60.0)

    p = parser("rm-node", "remove a node gracefully: pods, then SIGTERM (Shutdown, lease released)", _rm_node)
    p.add_argument("node")
    p.add_argument("--timeout", type=float, default=30.0)

    p = parser("status", "nodes, subnets, PIDs, hook failures, rejected leases, pods, policy", _status)
    p.add_argument("--json", action="store_true")

    for verb, help in (("apply", "create/update NetworkPolicies and Namespace/Pod labels from YAML"),
                       ("delete", "delete the NetworkPolicies named in YAML")):
        p = parser(verb, help + "; waits until every node enforces the change", _apply)
        p.add_argument("-f", "--filename", required=True, metavar="FILE", help="YAML file, or - for stdin")
        p.add_argument("--no-wait", dest="wait", action="store_false",
                       help="return once cluster.json is written")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default %(default)s)")

    p = parser("logs", "a node's daemon log (its hook trace)", _logs)
    p.add_argument("node")
    p.add_argument("--hooks", action="store_true", help="only the hook-call trace lines")
    p.add_argument("--raw", action="store_true", help="the JSON lines as written")
    p.add_argument("-f", "--follow", action="store_true")

    parser("down", "remove every namespace, process and file of the lab (idempotent, like mn -c)", _down)
    ls = sub.add_parser("list", help="labs on this machine")
    ls.set_defaults(func=lambda args: print("\n".join(list_labs())) or 0)


def _out(text: str) -> None:
    print(text, flush=True)


def _up(args) -> int:
    from flannel_ext._lab import ops
    report = ops.up(args.name, args.nodes, args.pods_per_node, args.net_conf, store=args.store,
                    underlay_cidr=args.underlay_cidr, cni_path=args.cni_path, watch=args.watch,
                    timeout=args.timeout, pods_file=args.pods_file, policy=args.policy, out=_out,
                    tune_kernel=args.tune_kernel)
    return 0 if report.ok else 1


def _check(args) -> int:
    from flannel_ext._lab import check
    lab = Lab.load(args.name)
    if args.port is not None:
        return _check_port(lab, args)
    if args.expect:
        raise LabError("--expect compares one port's table: give --port (and --protocol)")
    deadline = time.monotonic() + args.wait
    while True:
        report = check.run_check(lab, timeout=args.timeout or 3.0, icmp=args.icmp)
        if report.ok or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if args.json:
        _out(json.dumps(check.to_json(report), indent=2))
    else:
        _out(check.format_text(report))
    return 0 if report.ok else 1


def _check_port(lab: Lab, args) -> int:
    """The truth table of one port; with --wait, probe until two tables in a row agree
    (and match --expect), since a policy change may still be reaching the nodes."""
    from flannel_ext._lab import table
    expected = table.parse_expected(args.expect) if args.expect else None
    deadline = time.monotonic() + args.wait
    previous = None
    while True:
        result = table.run(lab, args.port, args.protocol, timeout=args.timeout or 1.0)
        diff = table.differences(result, expected) if expected is not None else []
        # A table that matches the expectation needs no second look; otherwise two in a row
        # must agree.
        stable = expected is not None or (previous is not None and previous.cells == result.cells)
        if (stable or args.wait <= 0) and not diff or time.monotonic() >= deadline:
            break
        previous = result
    if args.json:
        doc = table.to_json(result)
        if expected is not None:
            doc["differences"] = diff
        _out(json.dumps(doc, indent=2))
    else:
        _out(table.format_text(result))
        if expected is not None:
            _out("\n".join([f"DIFF {d}" for d in diff] + [
                f"{len(diff)} cell(s) differ from {args.expect}" if diff else f"matches {args.expect}"]))
    return 1 if diff else 0


def _apply(args) -> int:
    from flannel_ext._lab import cluster, daemons
    documents = cluster.read_documents(args.filename)
    start = time.monotonic()
    Lab.load(args.name)  # a missing lab is an error, before `locked` makes its directory
    with locked(args.name):
        lab = Lab.load(args.name)
        doc = cluster.load(lab)
        if args.lab_command == "apply":
            lines, missing = cluster.apply(doc, documents), list[str]()
        else:
            lines, missing = cluster.delete(doc, documents)
        generation = cluster.save(lab, doc)
    for line in lines + missing:
        _out(line)
    if not args.wait or not lab.policy:
        _out(f"generation {generation} written" + ("" if lab.policy else " (this lab runs no policy agent)"))
        return 1 if missing else 0
    statuses = cluster.wait_generation(lab, generation, args.timeout, lambda n: daemons.running(lab, n))
    _out(f"generation {generation} enforced on {len(statuses)} node(s) in {time.monotonic() - start:.2f}s")
    names = {f"{(o['metadata'].get('namespace') or 'default')}/{o['metadata']['name']}"
             for _, o in documents if o["kind"] == "NetworkPolicy"}
    bad = {k: v for k, v in cluster.rejected(statuses).items() if k in names}
    for obj, error in sorted(bad.items()):
        _out(f"rejected networkpolicy {obj}: {error}")
    return 1 if missing or bad else 0


def _add_node(args) -> int:
    from flannel_ext._lab import ops
    return 0 if ops.add_node(args.name, args.node, args.pods, timeout=args.timeout, out=_out).ok else 1


def _rm_node(args) -> int:
    from flannel_ext._lab import ops
    ops.rm_node(args.name, args.node, timeout=args.timeout, out=_out)
    return 0


def _status(args) -> int:
    from flannel_ext._lab import cluster, ops
    lab = Lab.load(args.name)
    rows = ops.status_rows(lab)
    pods = cluster.pod_rows(lab)
    if args.json:
        _out(json.dumps({"name": lab.name, "dir": lab.dir, "net_conf": lab.net_conf, "store": lab.store,
                         "policy": lab.policy, "nodes": rows, "pods": pods}, indent=2))
    else:
        _out("\n".join([ops.format_status(lab, rows),
                        *cluster.format_policy(lab, {r["node"]: r.get("policy") for r in rows}),
                        *(f"  pod {p['namespace']}/{p['name']} on {p['node']} {p['ip']} "
                          + ",".join(f"{k}={v}" for k, v in p["labels"].items()) for p in pods)]))
    return 0 if all(r["running"] for r in rows) else 1


def _logs(args) -> int:
    from flannel_ext._lab import daemons
    lab = Lab.load(args.name)
    if args.node not in lab.nodes:
        raise LabError(f"lab {args.name!r} has no node {args.node!r} (nodes: {', '.join(lab.nodes)})")
    with open(lab.log_file(args.node), encoding="utf-8", errors="replace") as f:
        while True:
            line = f.readline()
            if not line:
                if not args.follow:
                    return 0
                time.sleep(0.2)
                continue
            text = line.rstrip("\n") if args.raw else daemons.render_log_line(line, args.hooks)
            if text is not None:
                try:
                    _out(text)
                except BrokenPipeError:
                    sys.stderr.close()
                    return 0


def _down(args) -> int:
    from flannel_ext._lab import ops
    return ops.down(args.name, out=_out)
