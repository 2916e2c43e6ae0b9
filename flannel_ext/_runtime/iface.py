"""Find the external interface, its address and MTU (flanneld's --iface/--public-ip rules)."""
from __future__ import annotations

import ipaddress
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


def _describe(link: dict) -> ExternalInterface:
    v4 = [a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"]
    v6 = [a["local"] for a in link.get("addr_info", [])
          if a.get("family") == "inet6" and a.get("scope") == "global"]
    if not v4:
        raise ConfigError("--iface", "iface", link["ifname"], "the interface has no IPv4 address",
                          "give an interface with an address, or --public-ip")
    return ExternalInterface(link["ifname"], v4[0], int(link.get("mtu", 1500)), v6[0] if v6 else None)


def find_interface(iface: str | None = None, public_ip: str | None = None) -> ExternalInterface:
    """--iface (a name or an IP), else the interface owning --public-ip, else the default route's."""
    links = _links()
    if iface:
        for link in links:
            addrs = [a.get("local") for a in link.get("addr_info", [])]
            if link["ifname"] == iface or iface in addrs:
                found = _describe(link)
                if iface in addrs:
                    found = ExternalInterface(found.name, iface, found.mtu, found.address6)
                return found
        raise ConfigError("--iface", "iface", iface, "no interface with that name or address",
                          "see `ip addr` for the names in this network namespace")
    if public_ip:
        for link in links:
            if public_ip in [a.get("local") for a in link.get("addr_info", [])]:
                return _describe(link)
    routes = ip_json(None, "route", "show", "default")
    if routes and routes[0].get("dev"):
        for link in links:
            if link["ifname"] == routes[0]["dev"]:
                return _describe(link)
    raise ConfigError("--iface", "iface", None, "no default route to pick the external interface from",
                      "pass --iface NAME (or --public-ip with an address on an interface)")


def check_ip(flag: str, value: str, version: int = 4) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(flag, None, value, "not an IP address", "give a dotted address such as 192.168.1.10")
    if addr.version != version:
        raise ConfigError(flag, None, value, f"not an IPv{version} address")
    return str(addr)
