"""flannel's lease model: LeaseAttrs JSON, subnet keys, and lease events.

The JSON is byte-identical to flannel's `lease.LeaseAttrs` (pkg/lease/lease.go):
field order PublicIP, PublicIPv6, BackendType, BackendData, BackendV6Data, with the
last three omitted when empty, and PublicIPv6 always present (null when unset).
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from enum import Enum

from flannel_ext._util import gojson

IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network

# flannel's own regex (pkg/subnet/subnet.go), anchored at both ends here.
_KEY_RE = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


@dataclass(frozen=True)
class LeaseAttrs:
    """What a node advertises about itself. `backend_data` is raw JSON text or None."""

    public_ip: str = "0.0.0.0"
    public_ipv6: str | None = None
    backend_type: str = ""
    backend_data: str | None = None
    backend_v6_data: str | None = None

    def __post_init__(self):
        # Keep raw JSON in Go's canonical form so equal data compares equal.
        for name in ("backend_data", "backend_v6_data"):
            raw = getattr(self, name)
            if raw is not None:
                object.__setattr__(self, name, gojson.compact_raw(raw))

    @classmethod
    def with_string_data(cls, public_ip: str, data: str | None, *, public_ipv6: str | None = None,
                         backend_type: str = "extension") -> LeaseAttrs:
        """Attrs as the extension backend writes them: BackendData is a JSON string."""
        return cls(public_ip=public_ip, public_ipv6=public_ipv6, backend_type=backend_type,
                   backend_data=gojson.dumps(data) if data else None)

    def to_json(self) -> str:
        """flannel's exact bytes for this value."""
        parts = [f'"PublicIP":{gojson.dumps(self.public_ip)}',
                 f'"PublicIPv6":{gojson.dumps(self.public_ipv6)}']
        if self.backend_type:
            parts.append(f'"BackendType":{gojson.dumps(self.backend_type)}')
        if self.backend_data:
            parts.append(f'"BackendData":{self.backend_data}')
        if self.backend_v6_data:
            parts.append(f'"BackendV6Data":{self.backend_v6_data}')
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseAttrs:
        """Parse a lease value as Go would (case-insensitive keys); raises ValueError."""
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"lease value is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("lease value is not a JSON object")
        get = lambda name: gojson.loads_case_insensitive(obj, name)  # noqa: E731
        public_ip, public_ipv6, backend_type = get("PublicIP"), get("PublicIPv6"), get("BackendType")
        for name, value in (("PublicIP", public_ip), ("PublicIPv6", public_ipv6), ("BackendType", backend_type)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} is not a string")

        def raw(name):
            value = get(name)
            return None if value is None else gojson.dumps(value)

        return cls(public_ip=public_ip or "0.0.0.0", public_ipv6=public_ipv6 or None,
                   backend_type=backend_type or "", backend_data=raw("BackendData"),
                   backend_v6_data=raw("BackendV6Data"))

    def backend_data_value(self):
        """The decoded BackendData (a str for extension leases), or None."""
        return None if self.backend_data is None else json.loads(self.backend_data)


def subnet_key(subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None = None) -> str:
    """flannel's key: ``10.5.1.0-24``, or ``10.5.1.0-24&fc00:0:0:1::-64`` for dual stack."""
    v4 = f"{subnet.network_address}-{subnet.prefixlen}" if subnet is not None else "0.0.0.0-0"
    if ipv6_subnet is None:
        return v4
    return f"{v4}&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """Inverse of `subnet_key`; raises ValueError for anything flannel would not produce."""
    match = _KEY_RE.match(key)
    if not match:
        raise ValueError(f"malformed subnet key {key!r}")
    ip, plen, ip6, plen6 = match.groups()
    try:
        v4 = ipaddress.IPv4Network(f"{ip}/{plen}")
        v6 = ipaddress.IPv6Network(f"{ip6}/{plen6}") if ip6 else None
    except ValueError as exc:
        raise ValueError(f"malformed subnet key {key!r}: {exc}") from None
    return v4, v6


@dataclass(frozen=True)
class Lease:
    """A subnet held by one node. `expiration` is a UNIX time, or None for no expiry."""

    subnet: IPv4Network | None
    attrs: LeaseAttrs = field(default_factory=LeaseAttrs)
    ipv6_subnet: IPv6Network | None = None
    expiration: float | None = None

    @property
    def key(self) -> str:
        return subnet_key(self.subnet, self.ipv6_subnet)

    def with_attrs(self, attrs: LeaseAttrs) -> Lease:
        return replace(self, attrs=attrs)

    def same_subnet(self, other: Lease) -> bool:
        """flannel's sameSubnet: equal v4 subnet and equal v6 subnet."""
        return self.subnet == other.subnet and self.ipv6_subnet == other.ipv6_subnet


class EventType(Enum):
    ADDED = "added"
    REMOVED = "removed"
    REJECTED = "rejected"  # an entry the store could not parse; never reaches a hook


@dataclass(frozen=True)
class LeaseEvent:
    """One change seen by a store watch. For REJECTED, `lease` is None and `key`/`reason` say why."""

    type: EventType
    lease: Lease | None
    key: str = ""
    reason: str = ""

    @classmethod
    def added(cls, lease: Lease) -> LeaseEvent:
        return cls(EventType.ADDED, lease, lease.key)

    @classmethod
    def removed(cls, lease: Lease) -> LeaseEvent:
        return cls(EventType.REMOVED, lease, lease.key)

    @classmethod
    def rejected(cls, key: str, reason: str) -> LeaseEvent:
        return cls(EventType.REJECTED, None, key, reason)
