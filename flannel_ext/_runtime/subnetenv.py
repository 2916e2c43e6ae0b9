"""subnet.env: written atomically with flannel's exact lines (Documentation/flanneld.md), and the one parser of it.

The daemon reads it back at start (its previous subnet), the CNI plugin builds each pod's
delegate config from it, and the lab waits for it: all three go through `parse`/`load`.
"""
from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass

from flannel_ext._config import paths
from flannel_ext._util.errors import ConfigError, FlannelExtError
from flannel_ext._util.files import write_atomic

DEFAULT_SUBNET_FILE = paths.SUBNET_FILE
#: The keys flannel's CNI plugin needs: one of each pair, plus MTU and IPMASQ.
NETWORK_KEYS = ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK")
SUBNET_KEYS = ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SubnetEnvError(FlannelExtError):
    """subnet.env is absent (`absent` is True: the daemon is not ready yet) or unusable."""

    def __init__(self, path: str, problem: str, *, hint: str = "", absent: bool = False):
        self.path, self.problem, self.hint, self.absent = path, problem, hint, absent
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class SubnetEnv:
    """What a pod needs from subnet.env; networks and subnets are IPv4 first, then IPv6."""

    networks: tuple[IPNetwork, ...]
    subnets: tuple[IPNetwork, ...]      # the lease networks (FLANNEL_SUBNET is its first address)
    mtu: int
    ipmasq: bool


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


def parse(text: str) -> dict[str, str]:
    """KEY=VALUE lines as godotenv (flannel's reader) takes them.

    Blank lines and ``#`` comments are skipped, an ``export`` prefix is allowed, and a value
    in single or double quotes is unquoted (a hand-written ``FLANNEL_MTU="1450"`` works).
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or key.startswith("#"):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def read(path: str) -> dict[str, str]:
    """The KEY=VALUE pairs of an existing subnet.env ({} when missing or unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse(handle.read())
    except OSError:
        return {}


def load(path: str) -> SubnetEnv:
    """subnet.env as flannel's CNI plugin reads it: network keys may be comma lists.

    Raises `SubnetEnvError` naming the file and the key at fault; ``absent`` is set when
    the file does not exist yet (flannel-ext has not written it: try again later).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            values = parse(handle.read())
    except FileNotFoundError:
        raise SubnetEnvError(path, "does not exist yet", absent=True,
                             hint="flannel-ext writes it once this node has its lease: is `flannel-ext run` "
                                  "up on this node, with this --subnet-file?") from None
    except OSError as exc:
        raise SubnetEnvError(path, f"cannot be read ({errno.errorcode.get(exc.errno or 0, exc.errno)})") from None
    missing = [" or ".join(keys) for keys in (NETWORK_KEYS, SUBNET_KEYS) if not any(values.get(k) for k in keys)]
    missing += [key for key in ("FLANNEL_MTU", "FLANNEL_IPMASQ") if not values.get(key)]
    if missing:
        raise SubnetEnvError(path, f"lacks {', '.join(missing)}")
    networks = tuple(_network(path, key, item) for key in NETWORK_KEYS
                     for item in values.get(key, "").split(",") if item.strip())
    subnets = tuple(_network(path, key, values[key]) for key in SUBNET_KEYS if values.get(key))
    try:
        mtu = int(values["FLANNEL_MTU"])
    except ValueError:
        raise SubnetEnvError(path, f"FLANNEL_MTU={values['FLANNEL_MTU']!r} is not a number") from None
    if values["FLANNEL_IPMASQ"] not in ("true", "false"):
        raise SubnetEnvError(path, f"FLANNEL_IPMASQ={values['FLANNEL_IPMASQ']!r} is neither true nor false")
    return SubnetEnv(networks, subnets, mtu, values["FLANNEL_IPMASQ"] == "true")


def _network(path: str, key: str, value: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise SubnetEnvError(path, f"{key}={value.strip()!r} is not a CIDR") from None


def previous_subnets(path: str):
    """The (IPv4, IPv6) subnets a previous run recorded, as flannel's second choice (Documentation/flanneld.md)."""
    values = read(path)

    def net(key, cls):
        try:
            return cls(values[key].split(",")[0], strict=False) if key in values else None
        except ValueError:
            return None
    return net("FLANNEL_SUBNET", ipaddress.IPv4Network), net("FLANNEL_IPV6_SUBNET", ipaddress.IPv6Network)
