"""flannel's lease model: LeaseAttrs JSON, subnet keys, and lease events.

The JSON is byte-identical to flannel's `lease.LeaseAttrs` (pkg/lease/lease.go):
field order PublicIP, PublicIPv6, BackendType, BackendData, BackendV6Data, with the
last three omitted when empty, and PublicIPv6 always present (null when unset).
"""
from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from flannel_ext._util import gojson

IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network

# flannel's own regex (pkg/subnet/subnet.go), matched in full with ASCII digits: Python's
# `$` also matches before a trailing newline, and its `\d` matches any Unicode digit.
_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?", re.ASCII)
#: A lease value bigger than this is rejected unparsed (flannel's own are ~150 bytes).
MAX_VALUE_BYTES = 64 * 1024


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
        """Parse a lease value as Go would (case-insensitive keys, the last match wins);
        raises ValueError for anything else, whatever the input (bounded size and depth)."""
        return _plain_value(text) or cls.from_go_json(text)

    @classmethod
    def from_go_json(cls, text: str | bytes) -> LeaseAttrs:
        """`from_json` through the Go-compatible decoder alone, for any value."""
        try:
            obj = gojson.decode(text, max_bytes=MAX_VALUE_BYTES)
        except gojson.JSONError as exc:
            raise ValueError(f"lease value is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("lease value is not a JSON object")
        fields = gojson.struct_fields(obj)
        get = lambda name: fields.get(gojson.go_fold(name))  # noqa: E731
        public_ip, public_ipv6, backend_type = get("PublicIP"), get("PublicIPv6"), get("BackendType")
        for name, value in (("PublicIP", public_ip), ("PublicIPv6", public_ipv6), ("BackendType", backend_type)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
        return cls._from_fields(get)

    @classmethod
    def _from_fields(cls, get: Callable[[str], Any]) -> LeaseAttrs:
        """The attrs of a decoded value whose fields `get` returns by flannel's names (the
        string ones already checked to be strings or None)."""
        data, v6_data = get("BackendData"), get("BackendV6Data")
        attrs = cls.__new__(cls)   # the raw data is dumped canonical here: skip __post_init__'s pass
        for name, item in (("public_ip", get("PublicIP") or "0.0.0.0"), ("public_ipv6", get("PublicIPv6") or None),
                           ("backend_type", get("BackendType") or ""),
                           ("backend_data", None if data is None else gojson.dumps(data)),
                           ("backend_v6_data", None if v6_data is None else gojson.dumps(v6_data))):
            object.__setattr__(attrs, name, item)
        return attrs

    def backend_data_value(self):
        """The decoded BackendData (a str for extension leases), or None."""
        return None if self.backend_data is None else gojson.decode(self.backend_data)


_VALUE_FIELDS = frozenset({"PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"})


def _plain_value(text: object) -> LeaseAttrs | None:
    """The common value (flannel's exact field names, strings or null, no escapes) parsed
    with the C decoder; None for anything else, which `from_json` then parses as Go does.
    Without escapes and with only these keys and types, the two decoders agree; at 10,000
    leases this halves the cost of reading a store."""
    if not isinstance(text, str) or not text.isascii() or "\\" in text or len(text) > MAX_VALUE_BYTES:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):   # deep nesting: the Go decoder's depth limit answers
        return None
    if not isinstance(obj, dict) or not obj.keys() <= _VALUE_FIELDS or not all(
            value is None or isinstance(value, str) for value in obj.values()):
        return None
    return LeaseAttrs._from_fields(obj.get)


def subnet_key(subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None = None) -> str:
    """flannel's key: ``10.5.1.0-24``, or ``10.5.1.0-24&fc00:0:0:1::-64`` for dual stack."""
    v4 = f"{subnet.network_address}-{subnet.prefixlen}" if subnet is not None else "0.0.0.0-0"
    if ipv6_subnet is None:
        return v4
    return f"{v4}&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """Inverse of `subnet_key`; raises ValueError for anything flannel would not produce.

    Only the canonical spelling is a key: `10.5.1.0-24\\n` or `fc00:0:0:1::` written
    long would otherwise name the same subnets as the real key, and deleting such an
    alias would remove the real lease.
    """
    if not isinstance(key, str):
        raise ValueError(f"subnet key is {type(key).__name__}, not text")
    match = _KEY_RE.fullmatch(key) if len(key) <= 100 else None
    if not match:
        raise ValueError(f"malformed subnet key {key[:100]!r}")
    ip, plen, ip6, plen6 = match.groups()
    if ip6 is None:
        fast = _canonical_v4(ip, plen)
        if fast is not None:
            return fast, None
    try:
        v4 = ipaddress.IPv4Network(f"{ip}/{plen}")
        v6 = ipaddress.IPv6Network(f"{ip6}/{plen6}") if ip6 else None
    except ValueError as exc:
        raise ValueError(f"malformed subnet key {key!r}: {exc}") from None
    if subnet_key(v4, v6) != key:
        raise ValueError(f"subnet key {key!r} is not in canonical form ({subnet_key(v4, v6)!r})")
    return v4, v6


def _canonical_v4(ip: str, plen: str) -> IPv4Network | None:
    """The network of a canonical v4 key, built from integers (a third of the cost of
    parsing the text); None when the spelling is not canonical: the caller then parses
    the text and says what is wrong."""
    value = 0
    for octet in ip.split("."):
        number = int(octet)
        if number > 255 or str(number) != octet:
            return None
        value = value << 8 | number
    length = int(plen)
    if length > 32 or str(length) != plen or value & ((1 << (32 - length)) - 1):
        return None
    return IPv4Network((value, length))


def display_key(key: object) -> str:
    """A printable, bounded text for any stored key (bytes, bad Unicode, not a string)."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        text = bytes(key)[:200].decode("utf-8", "backslashreplace")
    else:
        text = key[:200] if isinstance(key, str) else repr(key)[:200]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")   # lone surrogates, escaped


def parse_entry(key: object, value: object, expiration: object = None) -> Lease:
    """The Lease a stored entry holds; ValueError, and only that, whatever the key and value."""
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, (int, float))):
        raise ValueError(f"expiration {display_key(expiration)!r} is not a number")
    try:
        subnet, ipv6_subnet = parse_subnet_key(key)   # type: ignore[arg-type] # checked inside
        attrs = LeaseAttrs.from_json(value)            # type: ignore[arg-type]
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - no stored entry may stop a node
        raise ValueError(f"unparsable entry ({type(exc).__name__})") from None
    return Lease(subnet if subnet.prefixlen else None, attrs, ipv6_subnet,
                 None if expiration is None else float(expiration))


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
    def rejected(cls, key: object, reason: str) -> LeaseEvent:
        """`key` may be anything a store holds (bytes, bad Unicode): it is made printable."""
        return cls(EventType.REJECTED, None, display_key(key), reason)
