"""NetworkPolicy semantics, as truth tables written from the Kubernetes spec.

The cluster is the one of Kubernetes' e2e netpol suite: namespaces x, y, z (labelled
``ns: <name>``), pods a, b, c in each (labelled ``pod: <name>``, on nodes n1, n2, n3),
serving TCP and UDP 80 and 81 under the names serve-80-tcp, serve-81-udp, ... A table
row is the client, a column the server; ``.`` means allowed, ``X`` blocked. Traffic is
decided by the per-node desired states only (egress on the client's node, ingress on the
server's), so these tables test `compute_state` and the state's reading, not a kernel.
"""
from __future__ import annotations

import pytest

from flannel_ext._policy.compute import Cluster, compute_state, connection_allowed

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
NODE_OF = {"a": "n1", "b": "n2", "c": "n3"}


def pod_ip(ns: str, pod: str) -> str:
    return f"10.{NAMESPACES.index(ns) + 1}.{PODS.index(pod) + 1}.10"


def raw_pods(labels: dict[str, dict] | None = None) -> list[dict]:
    out = []
    for ns in NAMESPACES:
        for pod in PODS:
            key = f"{ns}/{pod}"
            ports = [{"containerPort": port, "protocol": proto, "name": f"serve-{port}-{proto.lower()}"}
                     for port in (80, 81) for proto in ("TCP", "UDP")]
            out.append({"metadata": {"name": pod, "namespace": ns,
                                     "labels": (labels or {}).get(key, {"pod": pod})},
                        "spec": {"nodeName": NODE_OF[pod], "containers": [{"name": "c", "ports": ports}]},
                        "status": {"podIP": pod_ip(ns, pod)}})
    return out


def raw_namespaces(labels: dict[str, dict] | None = None) -> list[dict]:
    return [{"metadata": {"name": ns, "labels": (labels or {}).get(ns, {"ns": ns})}} for ns in NAMESPACES]


def netpol(name: str, spec: dict, namespace: str = "x") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def reachability(policies: list[dict], port: int = 80, protocol: str = "TCP", *, pod_labels=None,
                 ns_labels=None) -> str:
    cluster = Cluster.from_objects(1, raw_namespaces(ns_labels), raw_pods(pod_labels), policies)
    assert not cluster.rejected, cluster.rejected
    states = {node: compute_state(cluster, node) for node in set(NODE_OF.values())}
    pods = {p.key: p for p in cluster.pods}
    names = sorted(pods)
    rows = ["     " + " ".join(n.replace("/", "") for n in names)]
    for src in names:
        marks = ["." if connection_allowed(states, pods, src, dst, protocol, port) else "X" for dst in names]
        rows.append(f"{src.replace('/', '')}   " + "  ".join(marks))
    return "\n".join(rows)


def expect(table: str) -> str:
    """The expected table as written in a test, normalised (leading/trailing blank lines)."""
    lines = [line.rstrip() for line in table.strip("\n").splitlines()]
    return "\n".join(lines)


HEADER = "     xa xb xc ya yb yc za zb zc"

ALL_ALLOWED = expect(f"""
{HEADER}
xa   .  .  .  .  .  .  .  .  .
xb   .  .  .  .  .  .  .  .  .
xc   .  .  .  .  .  .  .  .  .
ya   .  .  .  .  .  .  .  .  .
yb   .  .  .  .  .  .  .  .  .
yc   .  .  .  .  .  .  .  .  .
za   .  .  .  .  .  .  .  .  .
zb   .  .  .  .  .  .  .  .  .
zc   .  .  .  .  .  .  .  .  .
""")


def test_no_policy_allows_everything():
    assert reachability([]) == ALL_ALLOWED


def test_default_deny_ingress_in_x_keeps_self_traffic():
    # A pod reaching its own IP never leaves it (loopback), so self is always allowed.
    deny = netpol("deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    assert reachability([deny]) == expect(f"""
{HEADER}
xa   .  X  X  .  .  .  .  .  .
xb   X  .  X  .  .  .  .  .  .
xc   X  X  .  .  .  .  .  .  .
ya   X  X  X  .  .  .  .  .  .
yb   X  X  X  .  .  .  .  .  .
yc   X  X  X  .  .  .  .  .  .
za   X  X  X  .  .  .  .  .  .
zb   X  X  X  .  .  .  .  .  .
zc   X  X  X  .  .  .  .  .  .
""")


def test_absent_policy_types_with_only_egress_rules_isolates_both_ways():
    # policyTypes absent: Ingress always, plus Egress because egress rules exist.
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}},
                       "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    assert reachability([pol]) == expect(f"""
{HEADER}
xa   .  X  X  .  .  .  X  X  X
xb   X  .  .  .  .  .  .  .  .
xc   X  .  .  .  .  .  .  .  .
ya   X  .  .  .  .  .  .  .  .
yb   X  .  .  .  .  .  .  .  .
yc   X  .  .  .  .  .  .  .  .
za   X  .  .  .  .  .  .  .  .
zb   X  .  .  .  .  .  .  .  .
zc   X  .  .  .  .  .  .  .  .
""")


def test_pod_selector_peer_is_in_the_policy_namespace_only():
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    assert reachability([pol]) == expect(f"""
{HEADER}
xa   .  .  .  .  .  .  .  .  .
xb   .  .  .  .  .  .  .  .  .
xc   X  .  .  .  .  .  .  .  .
ya   X  .  .  .  .  .  .  .  .
yb   X  .  .  .  .  .  .  .  .
yc   X  .  .  .  .  .  .  .  .
za   X  .  .  .  .  .  .  .  .
zb   X  .  .  .  .  .  .  .  .
zc   X  .  .  .  .  .  .  .  .
""")


def test_namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or():
    both = netpol("and", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    assert reachability([both]) == expect(f"""
{HEADER}
xa   .  .  .  .  .  .  .  .  .
xb   X  .  .  .  .  .  .  .  .
xc   X  .  .  .  .  .  .  .  .
ya   X  .  .  .  .  .  .  .  .
yb   .  .  .  .  .  .  .  .  .
yc   X  .  .  .  .  .  .  .  .
za   X  .  .  .  .  .  .  .  .
zb   X  .  .  .  .  .  .  .  .
zc   X  .  .  .  .  .  .  .  .
""")
    either = netpol("or", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    assert reachability([either]) == expect(f"""
{HEADER}
xa   .  .  .  .  .  .  .  .  .
xb   .  .  .  .  .  .  .  .  .
xc   X  .  .  .  .  .  .  .  .
ya   .  .  .  .  .  .  .  .  .
yb   .  .  .  .  .  .  .  .  .
yc   .  .  .  .  .  .  .  .  .
za   X  .  .  .  .  .  .  .  .
zb   X  .  .  .  .  .  .  .  .
zc   X  .  .  .  .  .  .  .  .
""")


def test_match_expressions_and_the_automatic_namespace_name_label():
    # Namespaces are relabelled so only kubernetes.io/metadata.name can tell them apart.
    pol = netpol("p", {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                       "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                           {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x", "y"]}]},
                           "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"},
                                                                {"key": "tier", "operator": "DoesNotExist"}]}}]}]})
    labels = {"z/c": {"pod": "c", "tier": "web"}}
    assert reachability([pol], pod_labels=labels, ns_labels={n: {} for n in NAMESPACES}) == expect(f"""
{HEADER}
xa   .  X  .  .  .  .  .  .  .
xb   X  .  .  .  .  .  .  .  .
xc   X  X  .  .  .  .  .  .  .
ya   X  X  .  .  .  .  .  .  .
yb   X  X  .  .  .  .  .  .  .
yc   X  X  .  .  .  .  .  .  .
za   .  .  .  .  .  .  .  .  .
zb   .  .  .  .  .  .  .  .  .
zc   X  X  .  .  .  .  .  .  .
""")


def test_ip_block_with_except():
    # 10.2.0.0/16 is namespace y; except y/b (10.2.2.10).
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.2.10/32"]}}]}]})
    assert reachability([pol]) == expect(f"""
{HEADER}
xa   .  .  .  .  .  .  .  .  .
xb   X  .  .  .  .  .  .  .  .
xc   X  .  .  .  .  .  .  .  .
ya   .  .  .  .  .  .  .  .  .
yb   X  .  .  .  .  .  .  .  .
yc   .  .  .  .  .  .  .  .  .
za   X  .  .  .  .  .  .  .  .
zb   X  .  .  .  .  .  .  .  .
zc   X  .  .  .  .  .  .  .  .
""")


def test_egress_ip_block_except():
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.3.0.0/16"]}}]}]})
    row = reachability([pol]).splitlines()[1]
    assert row == "xa   .  .  .  .  .  .  X  X  X"


SERVER_PORTS = {"x": "serve-81-tcp"}


@pytest.mark.parametrize("port,protocol,row", [
    (80, "TCP", "xb   X  .  .  .  .  .  .  .  ."),
    (81, "TCP", "xb   .  .  .  .  .  .  .  .  ."),
    (81, "UDP", "xb   X  .  .  .  .  .  .  .  ."),   # the name says TCP
])
def test_named_port_resolves_on_the_destination_pod(port, protocol, row):
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]})
    assert reachability([pol], port, protocol).splitlines()[2] == row


def test_named_port_per_destination_in_egress():
    # Each pod names a different number "web": x/b calls 80 web, x/c calls 81 web.
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                       "egress": [{"ports": [{"port": "web"}]}]})
    cluster = Cluster.from_objects(1, raw_namespaces(), raw_pods(), [pol])
    for raw in (p for p in raw_pods() if p["metadata"]["namespace"] == "x"):
        number = {"a": 80, "b": 80, "c": 81}[raw["metadata"]["name"]]
        raw["spec"]["containers"][0]["ports"].append({"containerPort": number, "name": "web"})
        cluster.pods = [p for p in cluster.pods if p.key != f"x/{raw['metadata']['name']}"]
        cluster.pods.extend(Cluster.from_objects(1, [], [raw], []).pods)
    states = {node: compute_state(cluster, node) for node in set(NODE_OF.values())}
    pods = {p.key: p for p in cluster.pods}
    assert connection_allowed(states, pods, "x/a", "x/b", "TCP", 80)
    assert not connection_allowed(states, pods, "x/a", "x/b", "TCP", 81)
    assert connection_allowed(states, pods, "x/a", "x/c", "TCP", 81)
    assert not connection_allowed(states, pods, "x/a", "x/c", "TCP", 80)
    assert not connection_allowed(states, pods, "x/a", "y/b", "TCP", 80)   # y/b has no "web"


@pytest.mark.parametrize("port,allowed", [(79, False), (80, True), (81, True), (82, False)])
def test_end_port_range(port, allowed):
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]})
    assert (reachability([pol], port).splitlines()[2][5] == ".") is allowed


def test_protocol_defaults_to_tcp_and_udp_is_separate():
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80}]}]})
    assert reachability([pol], 80, "TCP") == ALL_ALLOWED
    assert reachability([pol], 80, "UDP").splitlines()[2] == "xb   X  .  .  .  .  .  .  .  ."


def test_policies_are_additive():
    only_b = netpol("b", {"podSelector": {"matchLabels": {"pod": "a"}},
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    only_y = netpol("y", {"podSelector": {"matchLabels": {"pod": "a"}},
                          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    column = [line[5] for line in reachability([only_b, only_y]).splitlines()[1:]]
    assert "".join(column) == "..X...XXX"


def test_ingress_all_and_ingress_none():
    deny = netpol("deny", {"podSelector": {}, "ingress": []})
    allow = netpol("all", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]})
    table = reachability([deny, allow])
    assert [line[5] for line in table.splitlines()[1:]] == ["."] * 9   # x/a: [{}] allows everything
    assert [line[8] for line in table.splitlines()[1:]] == list("X.XXXXXXX")   # x/b: [] allows nothing


def test_egress_deny_all_in_x():
    deny = netpol("deny", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert reachability([deny]).splitlines()[1:4] == [
        "xa   .  X  X  X  X  X  X  X  X",
        "xb   X  .  X  X  X  X  X  X  X",
        "xc   X  X  .  X  X  X  X  X  X"]


def test_label_change_moves_a_pod_in_and_out_of_selection():
    pol = netpol("p", {"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]})
    before = reachability([pol])
    after = reachability([pol], pod_labels={"x/c": {"pod": "c", "role": "client"}})
    assert [line[5] for line in before.splitlines()[1:]] == list(".XXXXXXXX")
    assert [line[5] for line in after.splitlines()[1:]] == list(".X.XXXXXX")


def test_the_node_itself_is_always_allowed_in():
    deny = netpol("deny", {"podSelector": {}})
    cluster = Cluster.from_objects(1, raw_namespaces(), raw_pods(), [deny])
    state = compute_state(cluster, "n1", ["192.168.1.1", "10.1.1.1"])
    assert state.allows("ingress", pod_ip("x", "a"), "10.1.1.1", "TCP", 80)
    assert not state.allows("ingress", pod_ip("x", "a"), pod_ip("y", "a"), "TCP", 80)


def test_pod_without_ip_is_ignored_until_it_has_one():
    pods = raw_pods()
    del pods[0]["status"]["podIP"]   # x/a
    cluster = Cluster.from_objects(1, raw_namespaces(), pods, [netpol("deny", {"podSelector": {}})])
    state = compute_state(cluster, "n1")
    assert pod_ip("x", "a") not in state.pods
    assert set(state.pods) == {pod_ip("y", "a"), pod_ip("z", "a")}
