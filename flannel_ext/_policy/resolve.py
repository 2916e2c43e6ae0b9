"""Selector matching and peer resolution for `compute`, kept between computations.

A rule's peers are a *group*, keyed by the canonical text of its selectors (`peer_key`):
200 policies repeating a few peer shapes resolve each shape once, and share one id (and
so one set in a hook). A group remembers its members, so when only some pods changed,
`Resolver.refresh` re-checks just those pods against every group.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flannel_ext._policy.model import LabelSelector, NetworkPolicy, Pod, Rule
from flannel_ext._policy.state import EGRESS, PortRange, RulePeers

if TYPE_CHECKING:
    from flannel_ext._policy.compute import Cluster


@dataclass
class Group:
    """One peer shape: the rule it came from, its current member pods and ipBlock networks."""

    policy: NetworkPolicy
    rule: Rule
    direction: str
    members: dict[str, Pod] = field(default_factory=dict)
    nets: list = field(default_factory=list)
    peers: RulePeers | None = None


class Resolver:
    """Selector matching (cached per selector object and distinct label set) and groups."""

    def __init__(self, cluster: Cluster):
        self.groups: dict[str, Group] = {}
        self.peers_by_id: dict[str, RulePeers] = {}
        self._match: dict[tuple[int, int], bool] = {}
        self._interned: dict[frozenset, int] = {}
        self._use(cluster)

    def _use(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._label_set: dict[int, int] = {}   # id(labels) → interned set; valid while `cluster` lives
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

    def selects(self, policy: NetworkPolicy, pod: Pod) -> bool:
        return pod.namespace == policy.namespace and self.matches(policy.pod_selector, pod.labels)

    def selected(self, policy: NetworkPolicy) -> list[Pod]:
        return [p for p in self.pods_by_ns.get(policy.namespace, ()) if self.matches(policy.pod_selector, p.labels)]

    def is_peer(self, group: Group, pod: Pod) -> bool:
        """Whether `pod` (with an IP) is one of the pods `group`'s selectors pick."""
        for peer in group.rule.peers:
            if peer.ip_block is not None:
                continue
            if peer.namespace_selector is None:
                if pod.namespace != group.policy.namespace:
                    continue
            else:
                ns = self.cluster.namespaces.get(pod.namespace)
                if ns is None or not self.matches(peer.namespace_selector, ns.labels):
                    continue
            if peer.pod_selector is None or self.matches(peer.pod_selector, pod.labels):
                return True
        return False

    def rule_peers(self, policy: NetworkPolicy, rule: Rule, direction: str) -> RulePeers:
        key = peer_key(policy, rule, direction)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(policy, rule, direction)
            if rule.peers:
                group.nets = [n for p in rule.peers if p.ip_block is not None for n in p.ip_block.networks()]
                group.members = {p.key: p for p in self._candidates(group) if self.is_peer(group, p)}
            self._resolve(key, group)
        assert group.peers is not None
        return group.peers

    def _candidates(self, group: Group) -> list[Pod]:
        spaces = set()
        for peer in group.rule.peers:
            if peer.ip_block is not None:
                continue
            if peer.namespace_selector is None:
                spaces.add(group.policy.namespace)
            else:
                spaces.update(ns.name for ns in self.cluster.namespaces.values()
                              if self.matches(peer.namespace_selector, ns.labels))
        return [p for space in sorted(spaces) for p in self.pods_by_ns.get(space, ())]

    def _resolve(self, key: str, group: Group) -> None:
        peer_id = hashlib.sha1(key.encode()).hexdigest()[:16]
        if not group.rule.peers:
            pods = [p for p in self.cluster.pods if p.ip] if group.direction == EGRESS else []
            group.peers = RulePeers(peer_id, group.direction, any=True, named=_named(group.rule, pods, group.direction))
            self.peers_by_id[peer_id] = group.peers
        else:
            pods = list(group.members.values())
            group.peers = RulePeers(peer_id, group.direction, cidrs=_cidrs(pods, group.nets),
                                    named=_named(group.rule, pods, group.direction))
        self.peers_by_id[peer_id] = group.peers

    def refresh(self, cluster: Cluster, changed: set[str], by_key: dict[str, Pod]) -> None:
        """Switch to `cluster`, whose pods (`by_key`) differ from the current ones only in
        `changed` (keys "ns/name"; namespaces and policies are the same objects)."""
        self._use(cluster)
        now = {k: pod for k in changed if (pod := by_key.get(k)) is not None and pod.ip}
        for key, group in self.groups.items():
            if not group.rule.peers:
                if group.direction == EGRESS and any(isinstance(s.port, str) for s in group.rule.ports):
                    self._resolve(key, group)   # named ports of every pod
                continue
            before = {k: group.members.pop(k) for k in changed if k in group.members}
            for k, pod in now.items():
                if self.is_peer(group, pod):
                    group.members[k] = pod
            if before or any(k in group.members for k in now):
                self._resolve(key, group)


def peer_key(policy: NetworkPolicy, rule: Rule, direction: str) -> str:
    """A canonical text for "who this rule allows": equal for rules that allow the same peers
    (and, for egress, the same named ports), whichever policy they are in."""
    def selector(sel: LabelSelector | None):
        if sel is None:
            return None
        return [list(sel.match_labels), sorted([r.key, r.operator, sorted(r.values)] for r in sel.expressions)]
    peers: list[list[Any]] = []
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


def rule_ports(rule: Rule, pod: Pod | None) -> tuple[PortRange, ...] | None:
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


