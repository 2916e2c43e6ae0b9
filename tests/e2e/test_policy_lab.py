"""Network policy in the lab over time: updates (policy, pod labels, namespace labels,
delete) take effect without a restart; a restarted node daemon re-enforces the policy;
bad policies are rejected and counted while the rest stays enforced.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from policy_lab import (
    REPO,
    Reachability,
    apply,
    check_table,
    lab_cmd,
    ok,
    up_netpol_lab,
)

from flannel_ext import testing
from flannel_ext._lab import cluster, daemons, topology
from flannel_ext._lab.state import Lab, locked

FROM_Y = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}%s}]}]
"""
DENY_X = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""


@pytest.fixture
def netpol_lab(netns_prefix, tmp_path):
    name = netns_prefix.rstrip("-")
    try:
        yield name, up_netpol_lab(name, REPO / "recipes" / "vxlan.json", tmp_path)
    finally:
        lab_cmd("down", "--name", name)
        topology.reap()  # the daemons `_restart` started from this process


def _pids(name: str) -> dict:
    return {n.name: n.pid for n in Lab.load(name).nodes.values()}


def to_xa(*allowed: str) -> Reachability:
    r = Reachability().expect("*", "x/a", False)
    for src in allowed:
        r.expect(src, "x/a", True)
    return r


def test_updates_take_effect_without_restart(netpol_lab, tmp_path):
    name, _ = netpol_lab
    pids = _pids(name)
    apply(name, FROM_Y % "")
    check_table(name, tmp_path, 80, "TCP", to_xa("y/*"))
    # Namespace z takes y's label: its pods are now allowed too; and back.
    apply(name, "kind: Namespace\nmetadata: {name: z, labels: {ns: y}}\n")
    check_table(name, tmp_path, 80, "TCP", to_xa("y/*", "z/*"))
    apply(name, "kind: Namespace\nmetadata: {name: z, labels: {ns: z}}\n")
    check_table(name, tmp_path, 80, "TCP", to_xa("y/*"))
    # The policy changes (AND pod=b), then pod y/c is relabelled pod=b.
    apply(name, FROM_Y % ", podSelector: {matchLabels: {pod: b}}")
    check_table(name, tmp_path, 80, "TCP", to_xa("y/b"))
    apply(name, "kind: Pod\nmetadata: {name: c, namespace: y, labels: {pod: b}}\n")
    check_table(name, tmp_path, 80, "TCP", to_xa("y/b", "y/c"))
    apply(name, FROM_Y % "", "delete")
    check_table(name, tmp_path, 80, "TCP", Reachability())
    assert _pids(name) == pids  # no daemon was restarted


def _restart(name: str, node: str, sig: int) -> float:
    """Stop node's daemon with `sig`, start it again as `lab up` did; returns the start time."""
    with locked(name):
        lab = Lab.load(name)
        n = lab.nodes[node]
        os.kill(n.pid, sig)
        testing.wait_for(lambda: not daemons.running(lab, n), 30, 0.05, what=f"{node}'s daemon to exit")
        started = time.time()
        daemons.start(lab, n)
        lab.save()
    return started


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_restarted_daemon_reenforces_the_policy(netpol_lab, tmp_path, sig):
    name, _ = netpol_lab
    apply(name, DENY_X)
    want = Reachability().expect("*", "x/*", False)
    check_table(name, tmp_path, 80, "TCP", want)
    # x/a lives on n1: restart n1's daemon and wait for its agent's first apply.
    started = _restart(name, "n1", sig)
    lab = Lab.load(name)
    testing.wait_for(lambda: (cluster.read_status(lab, "n1") or {}).get("applied", 0) > started, 30, 0.05,
                     what="n1's restarted agent to apply")
    assert topology.alive(lab.nodes["n1"].pid, daemons.marker(lab, lab.nodes["n1"]))
    check_table(name, tmp_path, 80, "TCP", want)
    check_table(name, tmp_path, 81, "UDP", want)
    # And it still follows changes.
    apply(name, DENY_X, "delete")
    check_table(name, tmp_path, 80, "TCP", Reachability())


BAD = {
    "bad-field": "spec: {podSelector: {}, ingress: [{form: [{podSelector: {}}]}]}",
    "bad-cidr": "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.50.0.0/33}}]}]}",
    "bad-operator": "spec: {podSelector: {matchExpressions: [{key: pod, operator: Is, values: [a]}]}, "
                    "policyTypes: [Ingress]}",
    "bad-type": "spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: eighty}]}]}",
}


def test_bad_policies_are_rejected_counted_and_the_rest_enforced(netpol_lab, tmp_path):
    name, _ = netpol_lab
    text = DENY_X + "".join(f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                            f"metadata: {{name: {bad}, namespace: y}}\n{spec}\n" for bad, spec in BAD.items())
    proc = lab_cmd("apply", "--name", name, "-f", "-", input=text)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for bad in BAD:
        assert f"rejected networkpolicy y/{bad}: " in proc.stdout
    assert "rejected networkpolicy x/deny" not in proc.stdout
    # The good one is enforced; the bad ones did not isolate anything in y.
    check_table(name, tmp_path, 80, "TCP", Reachability().expect("*", "x/*", False))
    matrix = lab_cmd("check", "--name", name, "--no-icmp", "--timeout", "1")
    assert matrix.returncode == 1 and "5 NetworkPolicies are in force and may block it" in matrix.stdout
    status = json.loads(ok(lab_cmd("status", "--name", name, "--json")))
    for node in status["nodes"]:
        policy = node["policy"]
        assert policy["rejected_total"] >= len(BAD) and policy["error"] is None
        assert {r["object"] for r in policy["rejected"]} == {f"y/{bad}" for bad in BAD}
        assert all(r["kind"] == "NetworkPolicy" and "\n" not in r["error"] for r in policy["rejected"])
    text_status = ok(lab_cmd("status", "--name", name))
    assert "rejected NetworkPolicy y/bad-cidr" in text_status
    # Deleting them empties the list.
    ok(lab_cmd("delete", "--name", name, "-f", "-", input=text))
    status = json.loads(ok(lab_cmd("status", "--name", name, "--json")))
    assert all(node["policy"]["rejected"] == [] for node in status["nodes"])
    check_table(name, tmp_path, 80, "TCP", Reachability())
