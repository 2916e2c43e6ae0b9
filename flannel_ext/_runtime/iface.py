"""Find the external interface, its address and MTU (flanneld's LookupExtIface rules).

Order, as flanneld: each ``--iface`` (a name or an address) in the order given, then
each ``--iface-regex`` (matched against addresses first, then names), then
``--iface-can-reach`` (the route to that address). When any of them is given and none
matches, that is an error; with none given, the interface owning ``--public-ip``, else
the default route's.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from flannel_ext._util.errors import ConfigError
from flannel_ext._util.netns import ip_json


@dataclass(frozen=True)
class ExternalInterface:
    name: str
    address: str          # the interface's IPv4 address (what the extension backend advertises)
    mtu: int
    address6: str | None = None


def _links() -> list[dict]:
    return ip_json(None, "addr", "show")


def _addresses(link: dict, family: str = "") -> list[str]:
    return [a["local"] for a in link.get("addr_info", [])
            if "local" in a and (not family or a.get("family") == family)
            and (family != "inet6" or a.get("scope") == "global")]


def _usable(link: dict, address: str | None = None) -> ExternalInterface | None:
    v4, v6 = _addresses(link, "inet"), _addresses(link, "inet6")
    if not v4:
        return None
    chosen = address if address in v4 else v4[0]
    return ExternalInterface(link["ifname"], chosen, int(link.get("mtu", 1500)), v6[0] if v6 else None)


def _by_name_or_address(links: list[dict], wanted: str) -> ExternalInterface | None:
    for link in links:
        if link["ifname"] == wanted or wanted in _addresses(link):
            return _usable(link, wanted)
    return None


def _by_regex(links: list[dict], pattern: str) -> ExternalInterface | None:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError("--iface-regex", None, pattern, f"not a regular expression ({exc})") from None
    for link in links:                      # flanneld tries every address before any name
        for address in _addresses(link, "inet"):
            if regex.search(address):
                return _usable(link, address)
    for link in links:
        if regex.search(link["ifname"]) and _usable(link):
            return _usable(link)
    return None


def _by_reach(links: list[dict], target: str) -> ExternalInterface | None:
    check_ip("--iface-can-reach", target)
    routes = ip_json(None, "route", "get", target)
    if not routes:
        return None
    for link in links:
        if link["ifname"] == routes[0].get("dev"):
            return _usable(link, routes[0].get("prefsrc"))
    return None


def find_interface(ifaces: Sequence[str] | str | None = None, public_ip: str | None = None, *,
                   regexes: Sequence[str] = (), can_reach: str | None = None) -> ExternalInterface:
    """The external interface by flanneld's rules (see the module docstring)."""
    if isinstance(ifaces, str):
        ifaces = [ifaces]
    ifaces = list(ifaces or [])
    links = _links()
    for wanted in ifaces:
        found = _by_name_or_address(links, wanted)
        if found:
            return found
    for pattern in regexes:
        found = _by_regex(links, pattern)
        if found:
            return found
    if can_reach:
        found = _by_reach(links, can_reach)
        if found:
            return found
    if ifaces or regexes or can_reach:
        tried = [f"--iface {i}" for i in ifaces] + [f"--iface-regex {r}" for r in regexes]
        tried += [f"--iface-can-reach {can_reach}"] if can_reach else []
        raise ConfigError(tried[0].split()[0], None, None,
                          f"no interface with an IPv4 address matches {', '.join(tried)}",
                          "see `ip addr` for the names and addresses in this network namespace")
    if public_ip:
        for link in links:
            if public_ip in _addresses(link) and _usable(link, public_ip):
                return _usable(link, public_ip)  # type: ignore[return-value]
    routes = ip_json(None, "route", "show", "default")
    if routes and routes[0].get("dev"):
        for link in links:
            if link["ifname"] == routes[0]["dev"]:
                found = _usable(link)
                if found:
                    return found
                raise ConfigError("--iface", None, link["ifname"],
                                  "the default route's interface has no IPv4 address",
                                  "pass --iface NAME of an interface with an address, or --public-ip")
    raise ConfigError("--iface", None, None, "no default route to pick the external interface from",
                      "pass --iface NAME (or --public-ip with an address on an interface)")


def check_ip(flag: str, value: str, version: int = 4) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(flag, None, value, "not an IP address",
                          "give a dotted address such as 192.168.1.10") from None
    if addr.version != version:
        raise ConfigError(flag, None, value, f"not an IPv{version} address")
    return str(addr)
