"""From namespaces, pods and policies to one node's `PolicyState`.

`Cluster` is what a source delivers (the file document or the Kubernetes objects);
`compute_state` resolves, for the node's own pods with an IP, which policies select them
per direction and which peers and ports each rule allows. Selector results are cached by
label set, so a cluster of a thousand pods with a few distinct label sets is cheap.
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from flannel_ext._policy.model import (NAMESPACE_NAME_LABEL, LabelSelector, Namespace, NetworkPolicy,
                                       Pod, PolicyRejected, Rule, parse_namespace, parse_pod,
                                       parse_policy)
from flannel_ext._policy.state import EGRESS, INGRESS, Allow, PodPolicy, PolicyState, PortRange, RulePeers


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
                     policies: Iterable[Any]) -> "Cluster":
        """Parse raw API objects; each invalid one is rejected alone."""
        out = cls(generation=generation)
        for kind, items, parse in (("Namespace", namespaces, parse_namespace), ("Pod", pods, parse_pod),
                                   ("NetworkPolicy", policies, parse_policy)):
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
    def from_document(cls, doc: Any, source: str = "policy file") -> "Cluster":
        """The file source's document: {"generation", "namespaces", "pods", "networkpolicies"}."""
        if not isinstance(doc, dict):
            raise PolicyRejected("document", source, "", "must be a JSON object")
        generation = doc.get("generation", 0)
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise PolicyRejected("document", source, "generation", "must be an integer")
        lists = []
        for key in ("namespaces", "pods", "networkpolicies"):
            value = doc.get(key) or []
            if not isinstance(value, list):
                raise PolicyRejected("document", source, key, "must be a list")
            lists.append(value)
        return cls.from_objects(generation, *lists)


class _Resolver:
    """Selector matching with a cache keyed by (selector, label set)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._cache: dict[tuple[LabelSelector, frozenset], bool] = {}
        self._label_keys: dict[int, frozenset] = {}
        self.pods_by_ns: dict[str, list[Pod]] = defaultdict(list)
        for pod in cluster.pods:
            if pod.ip:
                self.pods_by_ns[pod.namespace].append(pod)

    def matches(self, selector: LabelSelector, labels: dict[str, str]) -> bool:
        frozen = self._label_keys.get(id(labels))
        if frozen is None:
            frozen = self._label_keys[id(labels)] = frozenset(labels.items())
        key = (selector, frozen)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = selector.matches(labels)
        return hit

    def selected(self, policy: NetworkPolicy) -> list[Pod]:
        return [p for p in self.pods_by_ns.get(policy.namespace, ()) if self.matches(policy.pod_selector, p.labels)]

    def peers(self, policy: NetworkPolicy, rule: Rule) -> tuple[list[Pod], list]:
        """The pods and the networks (ipBlock minus except) one rule's peers select."""
        pods: dict[str, Pod] = {}
        nets: list = []
        for peer in rule.peers:
            if peer.ip_block is not None:
                nets.extend(peer.ip_block.networks())
                continue
            if peer.namespace_selector is None:
                spaces = [policy.namespace]
            else:
                spaces = [ns.name for ns in self.cluster.namespaces.values()
                          if self.matches(peer.namespace_selector, ns.labels)]
            for space in spaces:
                for pod in self.pods_by_ns.get(space, ()):
                    if peer.pod_selector is None or self.matches(peer.pod_selector, pod.labels):
                        pods[pod.key] = pod
        return list(pods.values()), nets


def _cidrs(pods: list[Pod], nets: list) -> tuple[str, ...]:
    out = []
    for version in (4, 6):
        members = [n for n in nets if n.version == version] + \
            [ipaddress.ip_network(p.ip) for p in pods if p.ip and ipaddress.ip_address(p.ip).version == version]
        out.extend(str(n) for n in ipaddress.collapse_addresses(members))
    return tuple(out)


def _ports(rule: Rule, pod: Pod | None) -> tuple[PortRange, ...] | None:
    """Numeric port ranges of `rule`; named ports resolve against `pod` (None: left out)."""
    if not rule.ports:
        return None
    out = []
    for spec in rule.ports:
        if spec.port is None:
            out.append(PortRange(spec.protocol))
        elif isinstance(spec.port, int):
            out.append(PortRange(spec.protocol, spec.port, spec.end_port or spec.port))
        elif pod is not None and (number := pod.named_port(spec.port, spec.protocol)) is not None:
            out.append(PortRange(spec.protocol, number, number))
    return tuple(dict.fromkeys(out))


def _rule_peers(resolver: _Resolver, policy: NetworkPolicy, rule: Rule, rule_id: str,
                direction: str) -> RulePeers:
    if not rule.peers:
        pods = [p for p in resolver.cluster.pods if p.ip] if direction == EGRESS else []
        return RulePeers(rule_id, direction, any=True, named=_named(rule, pods, direction))
    pods, nets = resolver.peers(policy, rule)
    return RulePeers(rule_id, direction, cidrs=_cidrs(pods, nets), named=_named(rule, pods, direction))


def _named(rule: Rule, pods: list[Pod], direction: str) -> tuple[tuple[str, str, int], ...]:
    """Egress named ports resolve per destination pod, so they travel with the peers."""
    named = [s for s in rule.ports if isinstance(s.port, str)] if direction == EGRESS else []
    out = {(pod.ip, spec.protocol, number) for spec in named for pod in pods
           if pod.ip and (number := pod.named_port(str(spec.port), spec.protocol)) is not None}
    return tuple(sorted(out))


def compute_state(cluster: Cluster, node: str, node_ips: Iterable[str] = ()) -> PolicyState:
    """The desired state for `node`'s pods (those with spec.nodeName == node and an IP)."""
    resolver = _Resolver(cluster)
    local = {p.key for p in cluster.pods if p.node == node and p.ip}
    allows: dict[str, dict[str, list[Allow]]] = {INGRESS: {}, EGRESS: {}}
    rules: dict[str, RulePeers] = {}
    for policy in cluster.policies:
        targets = [p for p in resolver.selected(policy) if p.key in local]
        if not targets:
            continue
        for direction, policy_rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress)):
            if policy_rules is None:
                continue
            for pod in targets:
                allows[direction].setdefault(pod.key, [])   # isolated, even with no rules
            for i, rule in enumerate(policy_rules):
                rule_id = f"{policy.key}/{direction}/{i}"
                rules[rule_id] = _rule_peers(resolver, policy, rule, rule_id, direction)
                for pod in targets:
                    ports = _ports(rule, pod if direction == INGRESS else None)
                    allows[direction][pod.key].append(Allow(rule_id, ports))
    pods = {}
    for pod in cluster.pods:
        if pod.key in local and pod.ip:
            ing, eg = allows[INGRESS].get(pod.key), allows[EGRESS].get(pod.key)
            pods[pod.ip] = PodPolicy(pod.ip, pod.namespace, pod.name,
                                     None if ing is None else tuple(dict.fromkeys(ing)),
                                     None if eg is None else tuple(dict.fromkeys(eg)))
    return PolicyState(node=node, generation=cluster.generation, pods=pods, rules=rules,
                       node_ips=tuple(sorted(set(node_ips))))


def connection_allowed(states: dict[str, PolicyState], pods: dict[str, Pod], src: str, dst: str,
                       protocol: str, port: int) -> bool:
    """Whether pod `src` may open a connection to pod `dst` (keys "ns/name"), given every
    node's state: egress on the source's node and ingress on the destination's node."""
    s, d = pods[src], pods[dst]
    out = states[s.node].allows(EGRESS, s.ip or "", d.ip or "", protocol, port)
    return out and states[d.node].allows(INGRESS, d.ip or "", s.ip or "", protocol, port)
