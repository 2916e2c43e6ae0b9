"""NetworkPolicy truth tables in the lab, modelled on Kubernetes' e2e netpol suite
(test/e2e/network/netpol/network_policy.go): namespaces x, y, z; pods a, b, c on 3 nodes;
ports 80 and 81, TCP and UDP.

One lab per recipe (vxlan and host-gw, so the same tables hold over both dataplanes and
across nodes); the cases run in sequence in it: `lab apply` the policies, compare each
table with the expectation written from the spec (`Reachability`), `lab delete`. Real
packets from inside each source pod, real nftables in each node.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from policy_lab import REPO, Reachability, apply, check_table, lab_cmd, up_netpol_lab

ALL = Reachability


def policy(name: str, ns: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n---\n")


DENY_INGRESS_X = policy("deny-ingress", "x", "podSelector: {}\npolicyTypes: [Ingress]")


@dataclass
class Case:
    name: str
    policies: str | Callable[[dict], str]        # YAML, or a function of pod -> IP
    tables: list[tuple[int, str, Callable[[dict], Reachability]]]  # port, protocol, expected


def to_xa(*peers_allowed: str) -> Callable[[dict], Reachability]:
    """Everything allowed, except into x/a: only from the listed pods (plus x/a itself)."""
    def want(_ips: dict) -> Reachability:
        r = Reachability().expect("*", "x/a", False)
        for src in peers_allowed:
            r.expect(src, "x/a", True)
        return r
    return want


def everything(allowed: bool = True) -> Callable[[dict], Reachability]:
    return lambda _ips: Reachability(allowed)


CASES = [
    Case("default-deny ingress in x", DENY_INGRESS_X,
         [(80, "TCP", lambda _: ALL().expect("*", "x/*", False)),
          (81, "UDP", lambda _: ALL().expect("*", "x/*", False))]),
    Case("default-deny egress in x",
         policy("deny-egress", "x", "podSelector: {}\npolicyTypes: [Egress]"),
         [(80, "TCP", lambda _: ALL().expect("x/*", "*", False)),
          (80, "UDP", lambda _: ALL().expect("x/*", "*", False))]),
    Case("default-deny both directions in x",
         policy("deny-all", "x", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),
         [(81, "TCP", lambda _: ALL().expect("x/*", "*", False).expect("*", "x/*", False))]),
    Case("allow-all ingress beats default-deny (additive)",
         DENY_INGRESS_X + policy("allow-all", "x", "podSelector: {}\ningress: [{}]"),
         [(80, "TCP", everything())]),
    Case("empty ingress list on x/a denies everything",
         policy("none", "x", "podSelector: {matchLabels: {pod: a}}\ningress: []"),
         [(80, "TCP", to_xa())]),
    Case("podSelector: x/a from pod=b in its own namespace",
         policy("from-b", "x", "podSelector: {matchLabels: {pod: a}}\n"
                               "ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"),
         [(80, "TCP", to_xa("x/b"))]),
    Case("namespaceSelector: x/a from namespace y",
         policy("from-y", "x", "podSelector: {matchLabels: {pod: a}}\n"
                               "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"),
         [(80, "TCP", to_xa("y/*")), (81, "UDP", to_xa("y/*"))]),
    Case("namespaceSelector matchExpressions In [y, z]",
         policy("from-yz", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{from: [{namespaceSelector: {matchExpressions: "
                "[{key: ns, operator: In, values: [y, z]}]}}]}]"),
         [(80, "TCP", to_xa("y/*", "z/*"))]),
    Case("namespaceSelector matchExpressions NotIn [x]",
         policy("not-x", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{from: [{namespaceSelector: {matchExpressions: "
                "[{key: ns, operator: NotIn, values: [x]}]}}]}]"),
         [(80, "TCP", to_xa("y/*", "z/*"))]),
    Case("automatic label kubernetes.io/metadata.name",
         policy("from-z", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{from: [{namespaceSelector: {matchLabels: "
                "{kubernetes.io/metadata.name: z}}}]}]"),
         [(80, "TCP", to_xa("z/*"))]),
    Case("namespace AND pod selector in one peer: only y/b",
         policy("y-and-b", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, "
                "podSelector: {matchLabels: {pod: b}}}]}]"),
         [(80, "TCP", to_xa("y/b"))]),
    Case("namespace OR pod selector in two peers",
         policy("y-or-b", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, "
                "{podSelector: {matchLabels: {pod: b}}}]}]"),
         [(80, "TCP", to_xa("y/*", "x/b"))]),
    Case("podSelector matchExpressions across all namespaces into all of x",
         policy("from-any-a", "x", "podSelector: {}\n"
                "ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: "
                "[{key: pod, operator: In, values: [a]}]}}]}]"),
         [(80, "TCP", lambda _: ALL().expect("*", "x/*", False).expect("*/a", "x/*", True))]),
    Case("podSelector Exists / DoesNotExist on the selected pods",
         policy("exists", "x", "podSelector: {matchExpressions: [{key: pod, operator: Exists}]}\n"
                "ingress: [{from: [{podSelector: {matchExpressions: "
                "[{key: nosuch, operator: DoesNotExist}]}}]}]"),
         [(80, "TCP", lambda _: ALL().expect("*", "x/*", False).expect("x/*", "x/*", True))]),
    Case("ingress on port 80 only",
         policy("port-80", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{ports: [{port: 80, protocol: TCP}]}]"),
         [(80, "TCP", everything()), (81, "TCP", to_xa()), (80, "UDP", to_xa())]),
    Case("named port serve-81-tcp",
         policy("named", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{from: [{namespaceSelector: {}}], ports: [{port: serve-81-tcp}]}]"),
         [(81, "TCP", everything()), (80, "TCP", to_xa())]),
    Case("named port serve-80-udp (protocol UDP)",
         policy("named-udp", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{ports: [{port: serve-80-udp, protocol: UDP}]}]"),
         [(80, "UDP", everything()), (81, "UDP", to_xa()), (80, "TCP", to_xa())]),
    Case("endPort 81-90: 81 allowed, 80 not",
         policy("range", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{ports: [{port: 81, endPort: 90}]}]"),
         [(81, "TCP", everything()), (80, "TCP", to_xa())]),
    Case("egress from x/a to namespace y only",
         policy("egress-y", "x", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\n"
                "egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"),
         [(80, "TCP", lambda _: ALL().expect("x/a", "*", False).expect("x/a", "y/*", True)),
          (81, "UDP", lambda _: ALL().expect("x/a", "*", False).expect("x/a", "y/*", True))]),
    Case("egress from x on port 81 only",
         policy("egress-81", "x", "podSelector: {}\npolicyTypes: [Egress]\n"
                "egress: [{ports: [{port: 81}]}]"),
         [(81, "TCP", everything()), (80, "TCP", lambda _: ALL().expect("x/*", "*", False))]),
    Case("ipBlock with except: x/a from the pod network but y/b",
         lambda ips: policy("cidr", "x", "podSelector: {matchLabels: {pod: a}}\n"
                            f"ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{ips['y/b']}/32]}}}}]}}]"),
         [(80, "TCP", lambda _: ALL().expect("y/b", "x/a", False))]),
    Case("ipBlock egress: x/a to y/a's address only",
         lambda ips: policy("cidr-egress", "x", "podSelector: {matchLabels: {pod: a}}\n"
                            "policyTypes: [Egress]\n"
                            f"egress: [{{to: [{{ipBlock: {{cidr: {ips['y/a']}/32}}}}]}}]"),
         [(80, "TCP", lambda _: ALL().expect("x/a", "*", False).expect("x/a", "y/a", True))]),
    Case("two policies on x/a add up: pod=b (own namespace) or namespace z",
         policy("p1", "x", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]")
         + policy("p2", "x", "podSelector: {matchLabels: {pod: a}}\n"
                  "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]"),
         [(80, "TCP", to_xa("x/b", "z/*"))]),
    Case("ingress deny in y and egress deny from z together",
         policy("deny-in", "y", "podSelector: {}\npolicyTypes: [Ingress]")
         + policy("deny-out", "z", "podSelector: {}\npolicyTypes: [Egress]"),
         [(80, "TCP", lambda _: ALL().expect("*", "y/*", False).expect("z/*", "*", False))]),
]


@pytest.fixture(scope="module", params=["vxlan.json", "host-gw.json"])
def netpol_lab(request, tmp_path_factory):
    """A 3-node x/y/z lab on one recipe; torn down after the module's cases."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tmp = tmp_path_factory.mktemp("netpol")
    name = f"np{os.getpid() % 100000}{request.param.split('.')[0].replace('-', '')}"
    net_conf = tmp / "net-conf.json"
    shutil.copy(REPO / "recipes" / request.param, net_conf)
    try:
        ips = up_netpol_lab(name, net_conf, tmp)
        yield name, ips, tmp
    finally:
        lab_cmd("down", "--name", name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_truth_table(netpol_lab, case):
    name, ips, tmp = netpol_lab
    text = case.policies(ips) if callable(case.policies) else case.policies
    apply(name, text)
    try:
        for port, protocol, want in case.tables:
            check_table(name, tmp, port, protocol, want(ips))
    finally:
        apply(name, text, "delete")
    # Deleting the policies restores the open table (checked on the first port only).
    port, protocol, _ = case.tables[0]
    check_table(name, tmp, port, protocol, Reachability())
