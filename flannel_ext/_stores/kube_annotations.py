"""flannel's node annotations (pkg/subnet/kube/annotations.go, kube.go) and event rules.

Nothing here talks to the API server: `KubeStore` (kube.py) feeds node objects (plain
JSON dicts) in and sends the patches out, so these rules are testable on their own.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, UTC

from flannel_ext._util.errors import ConfigError
from flannel_ext._stores.lease import Lease, LeaseAttrs, LeaseEvent

DEFAULT_PREFIX = "flannel.alpha.coreos.com"
# flannel calls regexp.MatchString, which is unanchored at the start: re.search, not match.
_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")


@dataclass(frozen=True)
class AnnotationNames:
    """The full annotation keys for one prefix (flannel's `annotations` struct)."""

    kube_subnet_manager: str
    backend_data: str
    backend_v6_data: str
    backend_type: str
    public_ip: str
    public_ipv6: str
    node_public_ip: str
    node_public_ipv6: str
    public_ip_overwrite: str
    public_ipv6_overwrite: str

    @classmethod
    def from_prefix(cls, prefix: str = DEFAULT_PREFIX) -> AnnotationNames:
        """flannel's newAnnotations: normalise the prefix, then check it."""
        fix = "use an FQDN optionally followed by '/' and a lowercase name, e.g. flannel.alpha.coreos.com"
        if prefix.count("/") > 1:
            raise ConfigError("--kube-annotation-prefix", None, prefix,
                              "subnet/kube: prefix can contain at most single slash", fix)
        if "/" not in prefix:
            prefix += "/"
        if not prefix.endswith(("/", "-")):
            prefix += "-"
        if not _PREFIX_RE.search(prefix):
            raise ConfigError("--kube-annotation-prefix", None, prefix,
                              "subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*", fix)
        return cls(*(prefix + suffix for suffix in (
            "kube-subnet-manager", "backend-data", "backend-v6-data", "backend-type", "public-ip",
            "public-ipv6", "node-public-ip", "node-public-ipv6", "public-ip-overwrite",
            "public-ipv6-overwrite")))

    def managed(self, node: dict) -> bool:
        """Only nodes whose flannel said `kube-subnet-manager: "true"` carry leases."""
        return annotations_of(node).get(self.kube_subnet_manager) == "true"

    def change_keys(self, node: dict) -> tuple:
        """What makes an update an ADDED: the v4 and v6 (data, type, public ip) tuples."""
        ann = annotations_of(node)
        return ((ann.get(self.backend_data), ann.get(self.backend_type), ann.get(self.public_ip)),
                (ann.get(self.backend_v6_data), ann.get(self.backend_type), ann.get(self.public_ipv6)))


def annotations_of(node: dict) -> dict:
    return (node.get("metadata") or {}).get("annotations") or {}


def node_name(node: dict) -> str:
    return (node.get("metadata") or {}).get("name") or ""


def pod_cidrs(node: dict) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
    """The v4 and v6 PodCIDRs: spec.podCIDRs (1-2 entries) else spec.podCIDR. ValueError if bad."""
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if len(cidrs) > 2:
        raise ValueError(f"node {node_name(node)!r} pod cidrs should be IPv4/IPv6 only or dualstack")
    v4 = v6 = None
    for text in cidrs:
        net = ipaddress.ip_network(text, strict=False)   # Go's ParseCIDR masks the address
        if net.version == 4:
            v4 = v4 or net
        else:
            v6 = v6 or net
    return v4, v6


def _raw_data(text: str | None) -> str | None:
    # The annotation holds raw JSON (flannel stores RawMessage bytes); empty means absent.
    return text or None


def node_to_lease(node: dict, names: AnnotationNames, enable_ipv4: bool = True,
                  enable_ipv6: bool = False) -> Lease:
    """flannel's nodeToLease; ValueError (what flannel logs and drops) if it cannot."""
    ann = annotations_of(node)
    v4, v6 = pod_cidrs(node)
    public_ip, public_ipv6, data, v6_data = "0.0.0.0", None, None, None
    if enable_ipv4:
        public_ip = str(ipaddress.IPv4Address(ann.get(names.public_ip, "")))
        data = _raw_data(ann.get(names.backend_data))
        if v4 is None:
            raise ValueError("no IPv4 PodCIDR")
    if enable_ipv6:
        public_ipv6 = str(ipaddress.IPv6Address(ann.get(names.public_ipv6, "")))
        v6_data = _raw_data(ann.get(names.backend_v6_data))
        if v6 is None:
            raise ValueError("no IPv6 PodCIDR")
    attrs = LeaseAttrs(public_ip=public_ip, public_ipv6=public_ipv6,
                       backend_type=ann.get(names.backend_type, ""),
                       backend_data=data, backend_v6_data=v6_data)   # raises on bad JSON
    return Lease(subnet=v4 if enable_ipv4 else None, attrs=attrs,
                 ipv6_subnet=v6 if enable_ipv6 else None, expiration=None)


def annotation_patch(node: dict, names: AnnotationNames, attrs: LeaseAttrs) -> dict[str, str]:
    """The annotations AcquireLease must change on `node` ({} if already right).

    Values are byte-identical to flannel's: backend-data is RawMessage.MarshalJSON (so
    empty gives "null"), an existing `public-ip-overwrite` wins over our address, the v6
    pair is written only with a PublicIPv6, and kube-subnet-manager is "true".
    """
    ann = annotations_of(node)
    want = {names.backend_type: attrs.backend_type}
    data = attrs.backend_data or "null"
    # flannel skips the v4 pair only for vxlan with no data (a v6-only vxlan node).
    if not (attrs.backend_type == "vxlan" and data == "null"):
        want[names.backend_data] = data
        want[names.public_ip] = ann.get(names.public_ip_overwrite) or str(ipaddress.ip_address(attrs.public_ip))
    if attrs.public_ipv6:
        want[names.backend_v6_data] = attrs.backend_v6_data or "null"
        want[names.public_ipv6] = (ann.get(names.public_ipv6_overwrite)
                                   or str(ipaddress.ip_address(attrs.public_ipv6)))
    want[names.kube_subnet_manager] = "true"
    return {key: value for key, value in want.items() if ann.get(key) != value}


def go_time(now: datetime | None = None) -> str:
    """metav1.Time as Go marshals it: RFC 3339, seconds, UTC."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def network_available_patch(now: datetime | None = None) -> dict:
    """CompleteLease's status patch: NetworkUnavailable=False, reason FlannelIsUp."""
    stamp = go_time(now)
    # Field order as Go marshals v1.NodeCondition.
    condition = {"type": "NetworkUnavailable", "status": "False", "lastHeartbeatTime": stamp,
                 "lastTransitionTime": stamp, "reason": "FlannelIsUp",
                 "message": "Flannel is running on this node"}
    return {"status": {"conditions": [condition]}}


@dataclass
class NodeTracker:
    """What the watch has told the runtime, per node, and the rules for what to tell next."""

    names: AnnotationNames
    enable_ipv4: bool
    enable_ipv6: bool
    leases: dict[str, tuple[tuple, Lease]] = field(default_factory=dict)  # name -> (keys, lease sent)
    rejected: dict[str, str] = field(default_factory=dict)               # name -> resourceVersion

    def _changed(self, old: tuple, new: tuple) -> bool:
        return (self.enable_ipv4 and old[0] != new[0]) or (self.enable_ipv6 and old[1] != new[1])

    def update(self, node: dict) -> list[LeaseEvent]:
        name, known = node_name(node), self.leases.get(node_name(node))
        if not self.names.managed(node):
            self.rejected.pop(name, None)
            return [LeaseEvent.removed(self.leases.pop(name)[1])] if known else []
        keys = self.names.change_keys(node)
        if known and not self._changed(known[0], keys):
            return []   # PodCIDR or unrelated change: flannel ignores it too
        try:
            lease = node_to_lease(node, self.names, self.enable_ipv4, self.enable_ipv6)
        except ValueError as exc:
            version = (node.get("metadata") or {}).get("resourceVersion", "")
            if self.rejected.get(name) == version:
                return []   # already reported (a resync sees the same object again)
            self.rejected[name] = version
            return [LeaseEvent.rejected(name, f'Error turning node "{name}" to lease: {exc}')]
        self.rejected.pop(name, None)
        self.leases[name] = (keys, lease)
        stale = [LeaseEvent.removed(known[1])] if known and known[1].key != lease.key else []
        return stale + [LeaseEvent.added(lease)]

    def delete(self, node: dict) -> list[LeaseEvent]:
        name = node_name(node)
        self.rejected.pop(name, None)
        if name in self.leases:
            return [LeaseEvent.removed(self.leases.pop(name)[1])]
        if not self.names.managed(node):
            return []
        try:   # never seen (the watch started without a list): the final state will do
            return [LeaseEvent.removed(node_to_lease(node, self.names, self.enable_ipv4, self.enable_ipv6))]
        except ValueError:
            return []

    def diff(self, nodes: list[dict]) -> list[LeaseEvent]:
        """A fresh listing against what was sent: ADDED/REJECTED for changes, REMOVED for gone."""
        events, present = [], set()
        for node in nodes:
            present.add(node_name(node))
            events += self.update(node)
        for name in [n for n in self.leases if n not in present]:
            events.append(LeaseEvent.removed(self.leases.pop(name)[1]))
        self.rejected = {n: v for n, v in self.rejected.items() if n in present}
        return events
