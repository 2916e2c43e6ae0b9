"""The desired policy state of one node: what a policy hook is given to enforce.

It is pure data, already resolved: selectors are gone, replaced by the IPs and CIDRs they
select today, and named ports by the numbers they name. A pod that no policy selects for
a direction is not isolated for it (``None``); an isolated pod's traffic is allowed when
any of its `Allow` entries matches (policies are additive).

`RulePeers` are shared: every pod a rule applies to refers to the same peer set by id,
so a hook can keep one set per rule (not one entry per pod pair) and update it alone when
a peer's labels change.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

INGRESS, EGRESS = "ingress", "egress"


@dataclass(frozen=True)
class PortRange:
    """`protocol` ports `first`..`last`; first=None means every port of the protocol."""

    protocol: str
    first: int | None = None
    last: int | None = None

    def matches(self, protocol: str, port: int) -> bool:
        return protocol == self.protocol and (
            self.first is None or self.first <= port <= (self.last or self.first))


@dataclass(frozen=True)
class RulePeers:
    """Who a policy rule allows: `any` peer, or the `cidrs` (pod IPs as /32, ipBlocks with
    their excepts cut out; disjoint and sorted). `named` holds (peer IP, protocol, port) for
    an egress rule's named ports, which resolve per destination pod. Rules that allow the
    same peers (the same selectors, in any policy) share one RulePeers; `id` is stable for
    as long as those selectors exist, so a hook can keep one set per id."""

    id: str
    direction: str
    any: bool = False
    cidrs: tuple[str, ...] = ()
    named: tuple[tuple[str, str, int], ...] = ()

    def contains(self, ip: str) -> bool:
        if self.any:
            return True
        addr = ipaddress.ip_address(ip)
        return any(addr in ipaddress.ip_network(c) for c in self.cidrs)


@dataclass(frozen=True)
class Allow:
    """One rule applied to one pod: peers from `rules[rule]`, on `ports` (None: all ports
    and protocols; empty: no numeric port, only the rule's named ports)."""

    rule: str
    ports: tuple[PortRange, ...] | None = None


@dataclass(frozen=True)
class PodPolicy:
    """A local pod; `ingress`/`egress` is None when the pod is not isolated that way."""

    ip: str
    namespace: str
    name: str
    ingress: tuple[Allow, ...] | None = None
    egress: tuple[Allow, ...] | None = None

    def allows(self, direction: str) -> tuple[Allow, ...] | None:
        return self.ingress if direction == INGRESS else self.egress


@dataclass(frozen=True)
class PolicyState:
    """Everything a policy hook needs for one node, for one `generation` of the source."""

    node: str
    generation: int = 0
    pods: Mapping[str, PodPolicy] = field(default_factory=dict)   # by pod IP
    rules: Mapping[str, RulePeers] = field(default_factory=dict)  # by rule id
    node_ips: tuple[str, ...] = ()

    def allows(self, direction: str, pod_ip: str, peer_ip: str, protocol: str, port: int) -> bool:
        """Whether local pod `pod_ip` may receive from (ingress) or send to (egress) `peer_ip`
        on `protocol`/`port` under this state: the reference reading of the state."""
        pod = self.pods.get(pod_ip)
        allows = pod.allows(direction) if pod else None
        if allows is None:
            return True
        if direction == INGRESS and peer_ip in self.node_ips:
            return True   # the node itself (kubelet probes) is never blocked
        for allow in allows:
            rule = self.rules[allow.rule]
            if (peer_ip, protocol, port) in rule.named:
                return True
            if rule.contains(peer_ip) and (allow.ports is None or
                                           any(p.matches(protocol, port) for p in allow.ports)):
                return True
        return False
