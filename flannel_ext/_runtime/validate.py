"""Validate a remote lease before any hook sees it.

A lease is only data from another node (or from whoever can write the store), so it is
checked like untrusted input: the subnet must sit inside Network with the configured
length (an IPv6 subnet inside IPv6Network, and none without one), the public IPs must be
unicast addresses outside the pod networks with no zone (`%...`), and backend data must
be a small string with no NUL. Any unforeseen failure is a rejection too. A failure is
a `Rejection`; the runtime logs and counts it, and never runs a hook for it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import NoReturn

from flannel_ext._config.netconf import NetConf
from flannel_ext._hooks.base import Hook, RemoteLease
from flannel_ext._stores.lease import Lease, LeaseAttrs
from flannel_ext._util import gojson

MAX_BACKEND_DATA = 4096


@dataclass(frozen=True)
class Rejection:
    key: str
    reason: str      # a short category, used as the metrics label
    detail: str      # what exactly was wrong


class Skipped(Exception):
    """A valid lease of a backend type this hook does not program (flannel ignores those)."""


def _unicast(text: object, version: int) -> str | None:
    """None when `text` is a usable unicast address of that IP version, else the problem.
    Go's net.ParseIP takes no zone, so `fe80::1%eth0` (or `%$(...)`) is not an address."""
    if not isinstance(text, str) or "%" in text:
        return "not an IP address"
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


def _check_subnets(lease: Lease, config: NetConf) -> tuple[str, str] | None:
    """(reason, detail) when a subnet is not one this network could have leased."""
    subnet, v6 = lease.subnet, lease.ipv6_subnet
    if config.enable_ipv4 and config.network is not None:
        if subnet is None or not subnet.subnet_of(config.network):
            return "subnet_outside_network", f"subnet {subnet} is not inside Network {config.network}"
        if config.subnet_len and subnet.prefixlen != config.subnet_len:
            return "subnet_length", f"subnet {subnet} is not a /{config.subnet_len}"
    if v6 is not None:
        if config.ipv6_network is None:
            # ::/0 or fe80::/64 from a node of a network that has no IPv6 at all.
            return "subnet_outside_network", f"IPv6 subnet {v6}, but no IPv6Network is configured"
        if not v6.subnet_of(config.ipv6_network):
            return "subnet_outside_network", f"IPv6 subnet {v6} is not inside {config.ipv6_network}"
        if config.ipv6_subnet_len and v6.prefixlen != config.ipv6_subnet_len:
            return "subnet_length", f"IPv6 subnet {v6} is not a /{config.ipv6_subnet_len}"
    return None


def _check_public_ips(attrs: LeaseAttrs, config: NetConf) -> str | None:
    """The problem with the advertised addresses, if any. An address inside the pod
    network would make the route to that node's pods go through a pod."""
    for name, text, version, pods in (("PublicIP", attrs.public_ip, 4, config.network),
                                      ("PublicIPv6", attrs.public_ipv6, 6, config.ipv6_network)):
        if text is None and version == 6:
            continue
        problem = _unicast(text, version)
        if problem is None and isinstance(text, str) and pods is not None and ipaddress.ip_address(text) in pods:
            problem = f"inside the pod network {pods}"
        if problem:
            return f"{name} {text!r} is {problem}"
    return None


def _backend_text(attrs: LeaseAttrs) -> tuple[str | None, str]:
    """(problem, the data as the hook gets it): a small string with no NUL."""
    raw = attrs.backend_data
    if raw is not None and len(raw.encode("utf-8", "surrogatepass")) > MAX_BACKEND_DATA + 2:
        return f"BackendData is {len(raw.encode('utf-8', 'surrogatepass'))} bytes, over {MAX_BACKEND_DATA}", ""
    try:
        value = None if raw is None else gojson.decode(raw)
    except gojson.JSONError as exc:
        return f"BackendData is not valid JSON: {exc}", ""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif attrs.backend_type != "extension" and isinstance(value, dict):
        text = raw or ""  # e.g. native vxlan's {"VNI":1,"VtepMAC":…}, for hooks that accept it
    else:
        return f"BackendData is a JSON {type(value).__name__}, not a string", ""
    if "\x00" in text:
        return "BackendData contains a NUL byte", ""
    if len(text.encode()) > MAX_BACKEND_DATA:
        return f"BackendData is {len(text.encode())} bytes, over {MAX_BACKEND_DATA}", ""
    return None, text


def to_remote(lease: Lease, config: NetConf, hook: Hook) -> RemoteLease:
    """The hook's view of `lease`; raises `RejectedLease` or `Skipped`, nothing else."""
    key = lease.key

    def reject(reason: str, detail: str) -> NoReturn:
        raise RejectedLease(Rejection(key, reason, detail))

    try:
        attrs = lease.attrs
        bad_subnet = _check_subnets(lease, config)
        if bad_subnet:
            reject(*bad_subnet)
        problem = _check_public_ips(attrs, config)
        if problem:
            reject("public_ip", problem)
        if attrs.backend_type not in hook.accepts_backend_types:
            raise Skipped(f"Ignoring non-extension subnet: type={attrs.backend_type}")
        problem, text = _backend_text(attrs)
        if problem:
            reject("backend_data", problem)
        remote = RemoteLease(subnet=lease.subnet, public_ip=attrs.public_ip, ipv6_subnet=lease.ipv6_subnet,
                             public_ipv6=attrs.public_ipv6, backend_type=attrs.backend_type,
                             backend_data=text, backend_data_raw=attrs.backend_data, key=key)
    except (RejectedLease, Skipped):
        raise
    except Exception as exc:  # noqa: BLE001 - no lease may stop a node: an unforeseen value is a rejection
        reject("invalid", f"{type(exc).__name__}: {str(exc)[:200]}")
    try:
        data = hook.parse_backend_data(remote)
    except Exception as exc:  # noqa: BLE001 - the hook's parser is user code, fed untrusted data
        reject("backend_data", f"backend data not accepted by the hook: {type(exc).__name__}: {exc}")
    return replace(remote, data=data)


class RejectedLease(ValueError):
    def __init__(self, rejection: Rejection):
        self.rejection = rejection
        super().__init__(f"{rejection.key}: {rejection.detail}")
