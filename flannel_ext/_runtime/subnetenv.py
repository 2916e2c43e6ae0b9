"""subnet.env: written atomically with flannel's exact lines (§5), and read back at start."""
from __future__ import annotations

import ipaddress
import os

from flannel_ext._util.errors import ConfigError
from flannel_ext._util.files import write_atomic

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"


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


def _unwritable(path: str, problem: str) -> ConfigError:
    directory = os.path.dirname(os.path.abspath(path))
    return ConfigError("--subnet-file", None, path, f"cannot write subnet.env: {problem}",
                       f"pass a writable path (default {DEFAULT_SUBNET_FILE}) or make {directory} "
                       "a writable directory")


def _ancestors(directory: str) -> list[str]:
    parts = [directory]
    while os.path.dirname(parts[-1]) != parts[-1]:
        parts.append(os.path.dirname(parts[-1]))
    return parts


def check_writable(path: str) -> None:
    """Fail at start-up, before any hook runs, if subnet.env cannot be written there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in _ancestors(directory) if os.path.lexists(p)), directory)
        problem = f"{blocker} is not a directory" if not os.path.isdir(blocker) else exc.strerror or str(exc)
        raise _unwritable(path, problem) from None
    if os.path.isdir(path):
        raise _unwritable(path, "it is a directory")
    if not os.access(directory, os.W_OK):
        raise _unwritable(path, "the directory is not writable")


def write(path: str, **fields) -> str:
    text = render(**fields)
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise _unwritable(path, exc.strerror or str(exc)) from None
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
    """The (IPv4, IPv6) subnets a previous run recorded, as flannel's second choice (§3)."""
    values = read(path)

    def net(key, cls):
        try:
            return cls(values[key].split(",")[0], strict=False) if key in values else None
        except ValueError:
            return None
    return net("FLANNEL_SUBNET", ipaddress.IPv4Network), net("FLANNEL_IPV6_SUBNET", ipaddress.IPv6Network)
