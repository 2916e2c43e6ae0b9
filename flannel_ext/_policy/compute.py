"""From namespaces, pods and policies to one node's `PolicyState`.

`Cluster` is what a source delivers (the file document or the Kubernetes objects);
`PolicyComputer` resolves, for the node's own pods with an IP, which policies select them
per direction and which peers and ports each rule allows, and between two snapshots that
differ only in pods it redoes only what those pods touch. `compute_state` is the one-shot
form; `connection_allowed` reads several nodes' states as one cluster would.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flannel_ext._policy.model import (
    NAMESPACE_NAME_LABEL,
    Namespace,
    NetworkPolicy,
    Pod,
    PolicyRejected,
    Rule,
    parse_namespace,
    parse_pod,
    parse_policy,
)
from flannel_ext._policy.resolve import Resolver, rule_ports
from flannel_ext._policy.state import (
    EGRESS,
    INGRESS,
    Allow,
    PodPolicy,
    PolicyState,
    RulePeers,
)


@dataclass
class Cluster:
    """Parsed objects of one source generation; `rejected` are the objects set aside."""

    generation: int = 0
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    policies: list[NetworkPolicy] = field(default_factory=list)
    rejected: list[PolicyRejected] = field(default_factory=list)

    @classmethod
    def from_objects(cls, generation: int, namespaces: Iterable[Any], pods: Iterable[Any],
                     policies: Iterable[Any]) -> Cluster:
        """Parse raw API objects; each invalid one is rejected alone."""
        out = cls(generation=generation)
        for items, parse in ((namespaces, parse_namespace), (pods, parse_pod), (policies, parse_policy)):
            for raw in items:
                try:
                    obj = parse(raw)
                except PolicyRejected as exc:
                    out.rejected.append(exc)
                    continue
                if isinstance(obj, Namespace):
                    out.namespaces[obj.name] = obj
                elif isinstance(obj, Pod):
                    out.pods.append(obj)
                else:
                    out.policies.append(obj)
        for pod in out.pods:   # a namespace always exists in Kubernetes; keep its name label
            if pod.namespace not in out.namespaces:
                out.namespaces[pod.namespace] = Namespace(pod.namespace, {NAMESPACE_NAME_LABEL: pod.namespace})
        return out

    @classmethod
    def from_document(cls, doc: Any, source: str = "policy file") -> Cluster:
        """The file source's document: {"generation", "namespaces", "pods", "networkpolicies"}."""
        if not isinstance(doc, dict):
            raise PolicyRejected("document", source, "", "must be a JSON object")
        generation = doc.get("generation", 0)
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise PolicyRejected("document", source, "generation", "must be an integer")
        lists = []
        for key in ("namespaces", "pods", "networkpolicies"):
            value = doc.get(key)
            value = [] if value is None else value
            if not isinstance(value, list):
                raise PolicyRejected("document", source, key, "must be a list")
            lists.append(value)
        return cls.from_objects(generation, *lists)


class PolicyComputer:
    """compute_state for one node, incrementally: when a snapshot differs from the previous
    one only in pods (the common churn: labels, new pods, IPs), only those pods are
    re-checked against the peer groups and the policies of their namespace. Any change to
    namespaces or policies recomputes everything."""

    def __init__(self, node: str):
        self.node = node
        self._cluster: Cluster | None = None
        self._resolver: Resolver | None = None
        self._pods: dict[str, PodPolicy] = {}   # local pod key → its policy

    def compute(self, cluster: Cluster, node_ips: Iterable[str] = ()) -> PolicyState:
        prev = self._cluster
        changed: set[str] | None = None
        if prev is not None and self._resolver is not None and prev.namespaces == cluster.namespaces \
                and prev.policies == cluster.policies:
            # Keep the objects the caches are keyed by (the same content).
            cluster.namespaces, cluster.policies = prev.namespaces, prev.policies
            changed, now = _changed_pods(prev, cluster)
            self._resolver.refresh(cluster, changed, now)
        else:
            self._resolver = Resolver(cluster)
        self._cluster = cluster
        resolver = self._resolver
        local = [p for p in cluster.pods if p.node == self.node and p.ip]
        if changed is None:
            self._pods = _all_pod_policies(resolver, cluster, {p.key for p in local})
        else:
            keep = {k: v for k, v in self._pods.items() if k not in changed}
            for pod in local:
                if pod.key in changed:
                    keep[pod.key] = _pod_policy(resolver, cluster, pod)
            self._pods = keep
        pods: dict[str, PodPolicy] = {}
        rules: dict[str, RulePeers] = {}
        for pod in local:
            policy = self._pods[pod.key]
            pods[policy.ip] = policy
            for allow in (policy.ingress or ()) + (policy.egress or ()):
                if allow.rule not in rules:
                    rules[allow.rule] = resolver.peers_by_id[allow.rule]
        return PolicyState(node=self.node, generation=cluster.generation, pods=pods, rules=rules,
                           node_ips=tuple(sorted(set(node_ips))))


def _changed_pods(prev: Cluster, new: Cluster) -> tuple[set[str], dict[str, Pod]]:
    """The keys of pods added, removed or different, and the new pods by key."""
    before = {p.key: p for p in prev.pods}
    after = {p.key: p for p in new.pods}
    changed = {k for k, pod in after.items() if (old := before.get(k)) is None or old != pod}
    changed.update(k for k in before if k not in after)
    return changed, after


def _has_named(rule: Rule) -> bool:
    return any(isinstance(s.port, str) for s in rule.ports)


def _all_pod_policies(resolver: Resolver, cluster: Cluster, local: set[str]) -> dict[str, PodPolicy]:
    """Every local pod's policy, policy by policy (each policy's rules resolved once)."""
    allows: dict[str, dict[str, list[Allow]]] = {INGRESS: {}, EGRESS: {}}
    for policy in cluster.policies:
        targets = [p for p in resolver.selected(policy) if p.key in local]
        if not targets:
            continue
        for direction, policy_rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress)):
            if policy_rules is None:
                continue
            for pod in targets:
                allows[direction].setdefault(pod.key, [])   # isolated, even with no rules
            for rule in policy_rules:
                peers = resolver.rule_peers(policy, rule, direction)
                per_pod = direction == INGRESS and _has_named(rule)   # named: the target's numbers
                shared = None if per_pod else rule_ports(rule, None)
                for pod in targets:
                    allows[direction][pod.key].append(Allow(peers.id, rule_ports(rule, pod) if per_pod else shared))
    out = {}
    for pod in cluster.pods:
        if pod.key in local and pod.ip:
            ing, eg = allows[INGRESS].get(pod.key), allows[EGRESS].get(pod.key)
            out[pod.key] = PodPolicy(pod.ip, pod.namespace, pod.name,
                                     None if ing is None else tuple(ing), None if eg is None else tuple(eg))
    return out


def _pod_policy(resolver: Resolver, cluster: Cluster, pod: Pod) -> PodPolicy:
    """One pod's policy, in the same order `_all_pod_policies` builds it."""
    found: dict[str, list[Allow] | None] = {INGRESS: None, EGRESS: None}
    for policy in cluster.policies:
        if not resolver.selects(policy, pod):
            continue
        for direction, policy_rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress)):
            if policy_rules is None:
                continue
            allows = found[direction] = found[direction] or []
            for rule in policy_rules:
                peers = resolver.rule_peers(policy, rule, direction)
                allows.append(Allow(peers.id, rule_ports(rule, pod if direction == INGRESS else None)))
    ing, eg = found[INGRESS], found[EGRESS]
    return PodPolicy(pod.ip or "", pod.namespace, pod.name,
                     None if ing is None else tuple(ing), None if eg is None else tuple(eg))


def compute_state(cluster: Cluster, node: str, node_ips: Iterable[str] = ()) -> PolicyState:
    """The desired state for `node`'s pods (those with spec.nodeName == node and an IP)."""
    return PolicyComputer(node).compute(cluster, node_ips)


def connection_allowed(states: dict[str, PolicyState], pods: dict[str, Pod], src: str, dst: str,
                       protocol: str, port: int) -> bool:
    """Whether pod `src` may open a connection to pod `dst` (keys "ns/name"), given every
    node's state: egress on the source's node and ingress on the destination's node."""
    if src == dst:
        return True   # a pod reaching its own IP never leaves it (loopback)
    s, d = pods[src], pods[dst]
    out = states[s.node].allows(EGRESS, s.ip or "", d.ip or "", protocol, port)
    return out and states[d.node].allows(INGRESS, d.ip or "", s.ip or "", protocol, port)
