"""subnet.env: written atomically with flannel's exact lines (Documentation/flanneld.md), and read back at start."""
from __future__ import annotations

import ipaddress

from flannel_ext._config import paths
from flannel_ext._util.files import write_atomic

DEFAULT_SUBNET_FILE = paths.SUBNET_FILE


def render(*, network, subnet, mtu: int, ip_masq: bool, ipv6_network=None, ipv6_subnet=None) -> str:
    """flannel's lines; FLANNEL_SUBNET is the subnet's first host address with the prefix."""
    lines = []
    if network is not None and subnet is not None:
        lines += [f"FLANNEL_NETWORK={network}",
                  f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}"]
    if ipv6_network is not None and ipv6_subnet is not None:
        lines += [f"FLANNEL_IPV6_NETWORK={ipv6_network}",
                  f"FLANNEL_IPV6_SUBNET={ipv6_subnet.network_address + 1}/{ipv6_subnet.prefixlen}"]
    lines += [f"FLANNEL_MTU={mtu}", f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}"]
    return "".join(line + "\n" for line in lines)


def write(path: str, **fields) -> str:
    text = render(**fields)
    write_atomic(path, text)
    return text


def read(path: str) -> dict[str, str]:
    """KEY=VALUE lines of an existing subnet.env ({} when missing or unreadable)."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip('"')
    return values


def previous_subnets(path: str):
    """The (IPv4, IPv6) subnets a previous run recorded, as flannel's second choice (Documentation/flanneld.md)."""
    values = read(path)

    def net(key, cls):
        try:
            return cls(values[key].split(",")[0], strict=False) if key in values else None
        except ValueError:
            return None
    return net("FLANNEL_SUBNET", ipaddress.IPv4Network), net("FLANNEL_IPV6_SUBNET", ipaddress.IPv6Network)
