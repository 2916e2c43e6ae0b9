"""Bad NetworkPolicies are rejected alone, with one line naming the object and the field."""
from __future__ import annotations

import pytest

from flannel_ext._policy.compute import Cluster, compute_state
from flannel_ext._policy.model import PolicyRejected, parse_policy


def netpol(spec, name="bad", namespace="x"):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.mark.parametrize("spec,field,words", [
    ({"podSelector": {}, "ingres": []}, "spec.ingres", "unknown field"),
    ({"podSelector": {"matchLabel": {}}}, "spec.podSelector.matchLabel", "unknown field"),
    ({"podSelector": []}, "spec.podSelector", "must be an object"),
    ({"podSelector": {}, "ingress": {}}, "spec.ingress", "must be a list"),
    ({"podSelector": {"matchLabels": {"a": 1}}}, "spec.podSelector.matchLabels.a", "must be a string"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", "invalid CIDR '10.0.0.0/33'"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]", "not inside cidr"),
    ({"podSelector": {"matchExpressions": [{"key": "k", "operator": "Equals", "values": ["v"]}]}},
     "spec.podSelector.matchExpressions[0].operator", "invalid operator 'Equals'"),
    ({"podSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values", "non-empty"),
    ({"podSelector": {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}},
     "spec.podSelector.matchExpressions[0].values", "must be empty"),
    ({"podSelector": {}, "egress": [{"ports": [{"protocol": "ICMP"}]}]},
     "spec.egress[0].ports[0].protocol", "invalid protocol 'ICMP'"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]},
     "spec.ingress[0].ports[0].port", "not between 1 and 65535"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort", "needs a numeric port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
     "spec.ingress[0].ports[0].endPort", "must be between port"),
    ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]", "must set"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0].ipBlock", "may not be combined"),
    ({"podSelector": {}, "policyTypes": ["Inbound"]}, "spec.policyTypes[0]", "invalid value 'Inbound'"),
    ({"ingress": []}, "spec.podSelector", "is required"),
])
def test_one_line_naming_object_and_field(spec, field, words):
    with pytest.raises(PolicyRejected) as err:
        parse_policy(netpol(spec))
    message = str(err.value)
    assert message.startswith(f"NetworkPolicy x/bad: {field}: "), message
    assert words in message
    assert "\n" not in message
    assert err.value.field == field and err.value.object == "x/bad"


def test_a_bad_policy_leaves_the_others_enforced():
    pods = [{"metadata": {"name": "a", "namespace": "x", "labels": {"app": "db"}},
             "spec": {"nodeName": "n1"}, "status": {"podIP": "10.0.0.2"}}]
    good = netpol({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": []}, name="deny")
    bad = netpol({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nope"}}]}]})
    cluster = Cluster.from_objects(7, [], pods, [bad, good])
    assert [str(r) for r in cluster.rejected] == [
        "NetworkPolicy x/bad: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR 'nope'"]
    state = compute_state(cluster, "n1")
    assert not state.allows("ingress", "10.0.0.2", "10.0.0.3", "TCP", 80)


def test_document_shape_errors():
    with pytest.raises(PolicyRejected, match="generation: must be an integer"):
        Cluster.from_document({"generation": "7"})
    with pytest.raises(PolicyRejected, match="pods: must be a list"):
        Cluster.from_document({"generation": 1, "pods": {}})


def test_defaults_and_intorstring_ports():
    pol = parse_policy(netpol({"podSelector": {}, "ingress": [{"ports": [{"port": "8080"}, {}]}]}))
    assert pol.egress is None and pol.ingress is not None
    ports = pol.ingress[0].ports
    assert (ports[0].protocol, ports[0].port) == ("TCP", 8080)
    assert (ports[1].protocol, ports[1].port) == ("TCP", None)
