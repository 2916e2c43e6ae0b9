"""From namespaces, pods and policies to one node's `PolicyState`.

`Cluster` is what a source delivers (the file document or the Kubernetes objects);
`compute_state` resolves, for the node's own pods with an IP, which policies select them
per direction and which peers and ports each rule allows. Selector results are cached by
label set, so a cluster of a thousand pods with a few distinct label sets is cheap.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
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
            value = doc.get(key)
            value = [] if value is None else value
            if not isinstance(value, list):
                raise PolicyRejected("document", source, key, "must be a list")
            lists.append(value)
        return cls.from_objects(generation, *lists)


class _Resolver:
    """Selector matching and peer resolution, cached for one computation.

    Matches are cached per (selector object, distinct label set), and a rule's peers per
    `_peer_key`, so 200 policies repeating a few peer shapes resolve each shape once."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._match: dict[tuple[int, int], bool] = {}
        self._label_set: dict[int, int] = {}
        self._interned: dict[frozenset, int] = {}
        self.peers_by_key: dict[str, RulePeers] = {}
        self.pods_by_ns: dict[str, list[Pod]] = defaultdict(list)
        for pod in cluster.pods:
            if pod.ip:
                self.pods_by_ns[pod.namespace].append(pod)

    def matches(self, selector: LabelSelector, labels: dict[str, str]) -> bool:
        set_id = self._label_set.get(id(labels))
        if set_id is None:
            set_id = self._label_set[id(labels)] = self._interned.setdefault(frozenset(labels.items()),
                                                                                len(self._interned))
        key = (id(selector), set_id)
        hit = self._match.get(key)
        if hit is None:
            hit = self._match[key] = selector.matches(labels)
        return hit

    def selected(self, policy: NetworkPolicy) -> list[Pod]:
        return [p for p in self.pods_by_ns.get(policy.namespace, ()) if self.matches(policy.pod_selector, p.labels)]

    def peer_pods(self, policy: NetworkPolicy, rule: Rule) -> tuple[list[Pod], list]:
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

    def rule_peers(self, policy: NetworkPolicy, rule: Rule, direction: str) -> RulePeers:
        key = _peer_key(policy, rule, direction)
        found = self.peers_by_key.get(key)
        if found is None:
            peer_id = hashlib.sha1(key.encode()).hexdigest()[:16]
            if not rule.peers:
                pods = [p for p in self.cluster.pods if p.ip] if direction == EGRESS else []
                found = RulePeers(peer_id, direction, any=True, named=_named(rule, pods, direction))
            else:
                pods, nets = self.peer_pods(policy, rule)
                found = RulePeers(peer_id, direction, cidrs=_cidrs(pods, nets), named=_named(rule, pods, direction))
            self.peers_by_key[key] = found
        return found


def _peer_key(policy: NetworkPolicy, rule: Rule, direction: str) -> str:
    """A canonical text for "who this rule allows": equal for rules that allow the same peers
    (and, for egress, the same named ports), whichever policy they are in."""
    def selector(sel: LabelSelector | None):
        if sel is None:
            return None
        return [list(sel.match_labels), sorted([r.key, r.operator, sorted(r.values)] for r in sel.expressions)]
    peers = []
    for peer in rule.peers:
        if peer.ip_block is not None:
            peers.append(["ip", str(peer.ip_block.cidr), sorted(str(e) for e in peer.ip_block.excepts)])
        else:
            where = policy.namespace if peer.namespace_selector is None else None
            peers.append([where, selector(peer.namespace_selector), selector(peer.pod_selector)])
    named = sorted([str(s.port), s.protocol] for s in rule.ports if isinstance(s.port, str)) \
        if direction == EGRESS else []
    return json.dumps([direction, sorted(peers, key=json.dumps), named])


def _cidrs(pods: list[Pod], nets: list) -> tuple[str, ...]:
    """Pod IPs and networks as disjoint, sorted CIDRs (adjacent addresses merged)."""
    v4: list[tuple[int, int]] = []
    v6: list = []
    for net in nets:
        if net.version == 4:
            v4.append((int(net.network_address), int(net.broadcast_address)))
        else:
            v6.append(net)
    for pod in pods:
        if pod.ip and ":" not in pod.ip:
            a, b, c, d = (int(x) for x in pod.ip.split("."))
            n = (a << 24) | (b << 16) | (c << 8) | d
            v4.append((n, n))
        elif pod.ip:
            v6.append(ipaddress.ip_network(pod.ip))
    merged: list[list[int]] = []
    for start, end in sorted(v4):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out = []
    for start, end in merged:
        if start == end:
            out.append(f"{ipaddress.IPv4Address(start)}/32")
        else:
            out.extend(str(n) for n in ipaddress.summarize_address_range(
                ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)))
    out.extend(str(n) for n in ipaddress.collapse_addresses(v6))
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


def _named(rule: Rule, pods: list[Pod], direction: str) -> tuple[tuple[str, str, int], ...]:
    """Egress named ports resolve per destination pod, so they travel with the peers."""
    named = [s for s in rule.ports if isinstance(s.port, str)] if direction == EGRESS else []
    out = {(pod.ip, spec.protocol, number) for spec in named for pod in pods
           if pod.ip and (number := pod.named_port(str(spec.port), spec.protocol)) is not None}
    return tuple(sorted(out))


def _has_named(rule: Rule) -> bool:
    return any(isinstance(s.port, str) for s in rule.ports)


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
            for rule in policy_rules:
                peers = resolver.rule_peers(policy, rule, direction)
                rules[peers.id] = peers
                per_pod = direction == INGRESS and _has_named(rule)   # named: the target's numbers
                shared = None if per_pod else _ports(rule, None)
                for pod in targets:
                    ports = _ports(rule, pod) if per_pod else shared
                    allows[direction][pod.key].append(Allow(peers.id, ports))
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
    if src == dst:
        return True   # a pod reaching its own IP never leaves it (loopback)
    s, d = pods[src], pods[dst]
    out = states[s.node].allows(EGRESS, s.ip or "", d.ip or "", protocol, port)
    return out and states[d.node].allows(INGRESS, d.ip or "", s.ip or "", protocol, port)
