"""The objects policy is computed from: namespaces, pods and validated NetworkPolicies.

Parsing is strict for NetworkPolicy `spec` (as the API server is): an unknown field, a
wrong type, a bad CIDR, port or selector operator raises `PolicyRejected` naming the
object and the field, so one bad policy is set aside while the others stay enforced.
Pods and namespaces are read leniently: only the fields policy needs are looked at.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from flannel_ext._util.errors import FlannelExtError

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_METADATA_ONLY = {"apiVersion", "kind", "metadata", "spec", "status"}


class PolicyRejected(FlannelExtError):
    """One object is invalid; `field` is the JSON path of the offending field."""

    def __init__(self, kind: str, obj: str, field: str, problem: str):
        self.kind, self.object, self.field, self.problem = kind, obj, field, problem
        super().__init__(f"{kind} {obj}: {field}: {problem}")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels and matchExpressions, ANDed; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for req in self.expressions:
            present = req.key in labels
            if req.operator == "In" and not (present and labels[req.key] in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class IPBlock:
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    excepts: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`cidr` minus every `except`, as disjoint networks."""
        nets: list[Any] = [self.cidr]
        for hole in self.excepts:   # (same IP version: checked when parsed)
            nets = [piece for net in nets
                    for piece in ([net] if not net.overlaps(hole) else
                                  [] if net.subnet_of(hole) else net.address_exclude(hole))]
        return nets


@dataclass(frozen=True)
class Peer:
    """podSelector and/or namespaceSelector (ANDed), or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PortSpec:
    protocol: str = "TCP"
    port: int | str | None = None        # None: every port of `protocol`; str: a named port
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()         # empty: every peer
    ports: tuple[PortSpec, ...] = ()     # empty: every port and protocol


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...] | None     # None: the policy does not isolate for ingress
    egress: tuple[Rule, ...] | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ContainerPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    node: str = ""
    ip: str | None = None
    ports: tuple[ContainerPort, ...] = ()

    @functools.cached_property
    def key(self) -> str:   # looked up for every pod on every computation
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        return next((p.port for p in self.ports if p.name == name and p.protocol == protocol), None)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)


# --- parsing -------------------------------------------------------------------------
class _Reader:
    """Typed access to one object's fields; every failure names the object and the path."""

    def __init__(self, kind: str, obj: dict):
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        self.kind = kind
        self.name = f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}" \
            if kind != "Namespace" else str(meta.get("name") or "?")

    def fail(self, path: str, problem: str) -> PolicyRejected:
        return PolicyRejected(self.kind, self.name, path, problem)

    def obj(self, value: Any, path: str, allowed: set[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be an object, got {_typename(value)}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{path}.{unknown[0]}" if path else unknown[0],
                            f"unknown field (known: {', '.join(sorted(allowed))})")
        return value

    def array(self, value: Any, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {_typename(value)}")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_typename(value)}")
        return value

    def labels(self, value: Any, path: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a map of strings, got {_typename(value)}")
        for key, item in value.items():
            self.string(item, f"{path}.{key}")
        return dict(value)

    def selector(self, value: Any, path: str) -> LabelSelector:
        raw = self.obj(value, path, {"matchLabels", "matchExpressions"})
        labels = self.labels(raw.get("matchLabels"), f"{path}.matchLabels")
        reqs = []
        for i, expr in enumerate(self.array(raw.get("matchExpressions"), f"{path}.matchExpressions")):
            where = f"{path}.matchExpressions[{i}]"
            expr = self.obj(expr, where, {"key", "operator", "values"})
            key = self.string(expr.get("key"), f"{where}.key")
            op = self.string(expr.get("operator"), f"{where}.operator")
            if op not in OPERATORS:
                raise self.fail(f"{where}.operator", f"invalid operator {op!r} (use {', '.join(OPERATORS)})")
            values = [self.string(v, f"{where}.values[{j}]")
                      for j, v in enumerate(self.array(expr.get("values"), f"{where}.values"))]
            if op in ("In", "NotIn") and not values:
                raise self.fail(f"{where}.values", f"must be non-empty for operator {op}")
            if op in ("Exists", "DoesNotExist") and values:
                raise self.fail(f"{where}.values", f"must be empty for operator {op}")
            reqs.append(Requirement(key, op, frozenset(values)))
        return LabelSelector(tuple(sorted(labels.items())), tuple(reqs))

    def network(self, value: Any, path: str):
        text = self.string(value, path)
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.fail(path, f"invalid CIDR {text!r}") from None


def _typename(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_policy(obj: dict) -> NetworkPolicy:
    """A validated NetworkPolicy, or PolicyRejected naming the object and field."""
    r = _Reader("NetworkPolicy", obj)
    top = r.obj(obj, "", _METADATA_ONLY)
    meta = top.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise r.fail("metadata.name", "is required")
    spec = r.obj(top.get("spec"), "spec", {"podSelector", "ingress", "egress", "policyTypes"})
    if "podSelector" not in spec:
        raise r.fail("spec.podSelector", "is required (use {} to select every pod in the namespace)")
    selector = r.selector(spec["podSelector"], "spec.podSelector")
    ingress = tuple(_rule(r, rule, f"spec.ingress[{i}]", "from")
                    for i, rule in enumerate(r.array(spec.get("ingress"), "spec.ingress")))
    egress = tuple(_rule(r, rule, f"spec.egress[{i}]", "to")
                   for i, rule in enumerate(r.array(spec.get("egress"), "spec.egress")))
    if "policyTypes" in spec and spec["policyTypes"] is not None:
        types = [r.string(t, f"spec.policyTypes[{i}]")
                 for i, t in enumerate(r.array(spec["policyTypes"], "spec.policyTypes"))]
        for i, kind in enumerate(types):
            if kind not in ("Ingress", "Egress"):
                raise r.fail(f"spec.policyTypes[{i}]", f"invalid value {kind!r} (use Ingress or Egress)")
    else:
        # Kubernetes' defaulting: Ingress always, Egress when there are egress rules.
        types = ["Ingress"] + (["Egress"] if egress else [])
    return NetworkPolicy(namespace=str(meta.get("namespace") or "default"), name=meta["name"],
                         pod_selector=selector,
                         ingress=ingress if "Ingress" in types else None,
                         egress=egress if "Egress" in types else None)


def _rule(r: _Reader, raw: Any, path: str, peers_key: str) -> Rule:
    raw = r.obj(raw, path, {peers_key, "ports"})
    peers = tuple(_peer(r, p, f"{path}.{peers_key}[{i}]")
                  for i, p in enumerate(r.array(raw.get(peers_key), f"{path}.{peers_key}")))
    ports = tuple(_port(r, p, f"{path}.ports[{i}]") for i, p in enumerate(r.array(raw.get("ports"), f"{path}.ports")))
    return Rule(peers, ports)


def _peer(r: _Reader, raw: Any, path: str) -> Peer:
    raw = r.obj(raw, path, {"podSelector", "namespaceSelector", "ipBlock"})
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if raw.get(k) is not None]
    if not present:
        raise r.fail(path, "must set podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in present and len(present) > 1:
        raise r.fail(f"{path}.ipBlock", "may not be combined with podSelector or namespaceSelector")
    if "ipBlock" in present:
        block = r.obj(raw["ipBlock"], f"{path}.ipBlock", {"cidr", "except"})
        if "cidr" not in block:
            raise r.fail(f"{path}.ipBlock.cidr", "is required")
        cidr = r.network(block["cidr"], f"{path}.ipBlock.cidr")
        excepts = []
        for i, item in enumerate(r.array(block.get("except"), f"{path}.ipBlock.except")):
            net = r.network(item, f"{path}.ipBlock.except[{i}]")
            if net.version != cidr.version or not net.subnet_of(cidr):
                raise r.fail(f"{path}.ipBlock.except[{i}]", f"{net} is not inside cidr {cidr}")
            excepts.append(net)
        return Peer(ip_block=IPBlock(cidr, tuple(excepts)))
    pods = r.selector(raw["podSelector"], f"{path}.podSelector") if "podSelector" in present else None
    nss = r.selector(raw["namespaceSelector"], f"{path}.namespaceSelector") \
        if "namespaceSelector" in present else None
    return Peer(pod_selector=pods, namespace_selector=nss)


def _port(r: _Reader, raw: Any, path: str) -> PortSpec:
    raw = r.obj(raw, path, {"protocol", "port", "endPort"})
    protocol = r.string(raw.get("protocol", "TCP"), f"{path}.protocol")
    if protocol not in PROTOCOLS:
        raise r.fail(f"{path}.protocol", f"invalid protocol {protocol!r} (use TCP, UDP or SCTP)")
    port = raw.get("port")
    if isinstance(port, bool) or not (port is None or isinstance(port, (int, str))):
        raise r.fail(f"{path}.port", f"must be a number or a port name, got {_typename(port)}")
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise r.fail(f"{path}.port", f"{port} is not between 1 and 65535")
    if isinstance(port, str):
        if port.isdigit():
            port = int(port)   # an IntOrString given as a string of digits
        elif not port or len(port) > 15:
            raise r.fail(f"{path}.port", f"invalid port name {port!r} (1 to 15 characters)")
    end = raw.get("endPort")
    if end is not None:
        if isinstance(end, bool) or not isinstance(end, int):
            raise r.fail(f"{path}.endPort", f"must be a number, got {_typename(end)}")
        if not isinstance(port, int):
            raise r.fail(f"{path}.endPort", "needs a numeric port")
        if not port <= end <= 65535:
            raise r.fail(f"{path}.endPort", f"{end} must be between port ({port}) and 65535")
    return PortSpec(protocol, port, end)


def parse_namespace(obj: dict) -> Namespace:
    r = _Reader("Namespace", obj)
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        raise r.fail("metadata", "must be an object")
    name = r.string(meta.get("name"), "metadata.name")
    labels = r.labels(meta.get("labels"), "metadata.labels")
    labels[NAMESPACE_NAME_LABEL] = name   # as the API server does since Kubernetes 1.21
    return Namespace(name, labels)


def parse_pod(obj: dict) -> Pod:
    r = _Reader("Pod", obj)
    if not isinstance(obj, dict):
        raise r.fail("", "must be an object")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise r.fail("metadata", "must be an object")
    name = r.string(meta.get("name"), "metadata.name")
    namespace = r.string(meta.get("namespace") or "default", "metadata.namespace")
    labels = r.labels(meta.get("labels"), "metadata.labels")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise r.fail("spec", "spec and status must be objects")
    ip = status.get("podIP") or None
    if spec.get("hostNetwork") is True or status.get("phase") in ("Succeeded", "Failed"):
        ip = None   # a host-network pod has the node's IP; a finished pod's IP is reused
    if ip is not None:
        try:
            ip = str(ipaddress.ip_address(r.string(ip, "status.podIP")))
        except ValueError:
            raise r.fail("status.podIP", f"invalid IP {ip!r}") from None
    ports = []
    for i, container in enumerate(r.array(spec.get("containers"), "spec.containers")):
        if not isinstance(container, dict):
            raise r.fail(f"spec.containers[{i}]", "must be an object")
        for j, port in enumerate(r.array(container.get("ports"), f"spec.containers[{i}].ports")):
            where = f"spec.containers[{i}].ports[{j}]"
            if not isinstance(port, dict) or isinstance(port.get("containerPort"), bool) \
                    or not isinstance(port.get("containerPort"), int):
                raise r.fail(f"{where}.containerPort", "must be a number")
            ports.append(ContainerPort(str(port.get("name") or ""), str(port.get("protocol") or "TCP"),
                                       port["containerPort"]))
    return Pod(namespace, name, labels, str(spec.get("nodeName") or ""), ip, tuple(ports))
