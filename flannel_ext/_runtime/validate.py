"""Validate a remote lease before any hook sees it.

A lease is only data from another node (or from whoever can write the store), so it is
checked like untrusted input: the subnet must sit inside Network with the configured
length, the public IP must be a unicast address, and backend data must be a small string
with no NUL. A failure is a `Rejection`; the runtime logs and counts it, and never runs a
hook for it.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, replace

from flannel_ext._config.netconf import NetConf
from flannel_ext._hooks.base import Hook, RemoteLease
from flannel_ext._stores.lease import Lease

MAX_BACKEND_DATA = 4096


@dataclass(frozen=True)
class Rejection:
    key: str
    reason: str      # a short category, used as the metrics label
    detail: str      # what exactly was wrong


class Skipped(Exception):
    """A valid lease of a backend type this hook does not program (flannel ignores those)."""


def _unicast(text: str, version: int) -> str | None:
    """None when `text` is a usable unicast address of that IP version, else the problem."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return "not an IP address"
    if addr.version != version:
        return f"not an IPv{version} address"
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_link_local \
            or (version == 4 and addr == ipaddress.IPv4Address("255.255.255.255")):
        return "not a unicast address"
    return None


def to_remote(lease: Lease, config: NetConf, hook: Hook) -> RemoteLease:
    """The hook's view of `lease`; raises `Rejection`-carrying ValueError or `Skipped`."""
    key = lease.key
    attrs = lease.attrs

    def reject(reason: str, detail: str):
        raise RejectedLease(Rejection(key, reason, detail))

    subnet = lease.subnet
    if config.enable_ipv4 and config.network is not None:
        if subnet is None or not subnet.subnet_of(config.network):
            reject("subnet_outside_network", f"subnet {subnet} is not inside Network {config.network}")
        if config.subnet_len and subnet.prefixlen != config.subnet_len:
            reject("subnet_length", f"subnet {subnet} is not a /{config.subnet_len}")
    if lease.ipv6_subnet is not None and config.ipv6_network is not None:
        if not lease.ipv6_subnet.subnet_of(config.ipv6_network):
            reject("subnet_outside_network", f"IPv6 subnet {lease.ipv6_subnet} is not inside {config.ipv6_network}")
        if config.ipv6_subnet_len and lease.ipv6_subnet.prefixlen != config.ipv6_subnet_len:
            reject("subnet_length", f"IPv6 subnet {lease.ipv6_subnet} is not a /{config.ipv6_subnet_len}")
    problem = _unicast(attrs.public_ip, 4)
    if problem:
        reject("public_ip", f"PublicIP {attrs.public_ip!r} is {problem}")
    if attrs.public_ipv6 is not None:
        problem = _unicast(attrs.public_ipv6, 6)
        if problem:
            reject("public_ip", f"PublicIPv6 {attrs.public_ipv6!r} is {problem}")
    if attrs.backend_type not in hook.accepts_backend_types:
        raise Skipped(f"Ignoring non-extension subnet: type={attrs.backend_type}")
    raw = attrs.backend_data
    if raw is not None and len(raw.encode()) > MAX_BACKEND_DATA + 2:
        reject("backend_data", f"BackendData is {len(raw.encode())} bytes, over {MAX_BACKEND_DATA}")
    value = json.loads(raw) if raw is not None else None
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif attrs.backend_type != "extension" and isinstance(value, dict):
        text = raw  # e.g. native vxlan's {"VNI":1,"VtepMAC":…}, for hooks that accept it
    else:
        reject("backend_data", f"BackendData is a JSON {type(value).__name__}, not a string")
    if "\x00" in text:
        reject("backend_data", "BackendData contains a NUL byte")
    if len(text.encode()) > MAX_BACKEND_DATA:
        reject("backend_data", f"BackendData is {len(text.encode())} bytes, over {MAX_BACKEND_DATA}")
    remote = RemoteLease(subnet=subnet, public_ip=attrs.public_ip, ipv6_subnet=lease.ipv6_subnet,
                         public_ipv6=attrs.public_ipv6, backend_type=attrs.backend_type,
                         backend_data=text, backend_data_raw=raw, key=key)
    try:
        data = hook.parse_backend_data(remote)
    except (ValueError, TypeError) as exc:
        reject("backend_data", f"backend data not accepted by the hook: {exc}")
    return replace(remote, data=data)


class RejectedLease(ValueError):
    def __init__(self, rejection: Rejection):
        self.rejection = rejection
        super().__init__(f"{rejection.key}: {rejection.detail}")
