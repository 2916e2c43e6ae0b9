"""flannel's subnet choice (`tryAcquireLease` / `allocateSubnet`), shared by every store.

`plan_acquire` is pure: given the request and the current leases it says which lease of
ours to re-put, which of ours to delete, and which free subnets to try, in order. The
store applies the plan in its own transaction (sqlite) or compare-and-swap (etcd).

flannel's order: (1) reuse a lease whose PublicIP equals ours if it is compatible
(inside SubnetMin..SubnetMax with the configured prefix length), deleting it otherwise;
(2) the subnet from the previous subnet.env if free and compatible; (3) scan SubnetMin ->
SubnetMax, collect up to 100 free subnets and pick one uniformly at random. IPv6 is picked
independently by the same rules.
"""
from __future__ import annotations

import bisect
import ipaddress
import random
from dataclasses import dataclass, field
from typing import cast

from flannel_ext._stores.base import AcquireRequest
from flannel_ext._stores.lease import IPv4Network, IPv6Network, Lease

# flannel's bag size in allocateSubnet.
MAX_CANDIDATES = 100

Network = IPv4Network | IPv6Network


@dataclass
class AcquirePlan:
    """What a store should do to acquire a lease; see the module docstring."""

    reuse: Lease | None = None
    delete: list[Lease] = field(default_factory=list)
    candidates: list[IPv4Network] = field(default_factory=list)
    ipv6_candidates: list[IPv6Network] = field(default_factory=list)


def _default_len(prefix: int, bits: int) -> int:
    # CheckNetworkConfig: /22 or wider -> /24 (v6: /62 -> /64), else prefix + 2.
    wide, default = (22, 24) if bits == 32 else (62, 64)
    return default if prefix <= wide else prefix + 2


def _range(network, subnet_len, lo, hi):
    """(first, last, subnet_len) with flannel's defaults for unset values."""
    bits = network.max_prefixlen
    length = subnet_len or _default_len(network.prefixlen, bits)
    size = 1 << (bits - length)
    addr = type(network.network_address)
    # Defaults skip the first and the last subnet of the network, as flannel does.
    first = lo if lo is not None else addr(int(network.network_address) + size)
    last = hi if hi is not None else addr(int(network.broadcast_address) + 1 - 2 * size)
    return first, last, length


def subnet_range(config) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address, int]:
    """The IPv4 (SubnetMin, SubnetMax, SubnetLen), defaulted as flannel's CheckNetworkConfig."""
    if config.network is None:
        raise ValueError("net-conf has no Network")
    return _range(config.network, config.subnet_len, config.subnet_min, config.subnet_max)


def ipv6_subnet_range(config) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address, int]:
    """The IPv6 (IPv6SubnetMin, IPv6SubnetMax, IPv6SubnetLen), defaulted likewise."""
    if config.ipv6_network is None:
        raise ValueError("net-conf has no IPv6Network")
    return _range(config.ipv6_network, config.ipv6_subnet_len, config.ipv6_subnet_min,
                  config.ipv6_subnet_max)


def _compatible(subnet: Network | None, enabled: bool, rng_fn, config) -> bool:
    # isSubnetConfigCompat / isIPv6SubnetConfigCompat: a disabled family must be empty.
    if not enabled:
        return subnet is None or subnet.prefixlen == 0
    if subnet is None:
        return False
    first, last, length = rng_fn(config)
    return first <= subnet.network_address <= last and subnet.prefixlen == length


def is_compatible(lease: Lease, config) -> bool:
    """flannel's check that an existing lease still fits the configuration."""
    return (_compatible(lease.subnet, config.enable_ipv4, subnet_range, config)
            and _compatible(lease.ipv6_subnet, config.enable_ipv6, ipv6_subnet_range, config))


def _span(subnet: Network) -> tuple[int, int]:
    # Integer arithmetic: ipaddress's broadcast_address is ~20x slower, which shows at 65k leases.
    lo = int(subnet.network_address)
    return lo, lo + (1 << (subnet.max_prefixlen - subnet.prefixlen)) - 1


def _occupied(subnets: list[Network | None]) -> list[tuple[int, int]]:
    """Inclusive integer ranges of the taken subnets, sorted by start."""
    return sorted(_span(s) for s in subnets if s is not None and s.prefixlen > 0)


def _overlaps(subnet: Network, occupied: list[tuple[int, int]]) -> bool:
    lo, hi = _span(subnet)
    # Ranges starting at or before `hi` are the only ones that can overlap; taken subnets
    # nest or are disjoint, but check every such range's end to be safe against odd leases.
    end = bisect.bisect_right(occupied, (hi, float("inf")))
    return any(o_hi >= lo for _, o_hi in occupied[:end])


def free_subnets(first, last, length: int, occupied: list[tuple[int, int]],
                 limit: int = MAX_CANDIDATES) -> list[Network]:
    """The first `limit` free subnets from `first` to `last`, in address order.

    Same result as flannel's OuterLoop (every subnet against every lease), but it jumps
    over taken ranges, so a /8 with 65536 subnets and as many leases costs O(L log L).
    """
    net_cls = ipaddress.IPv4Network if first.version == 4 else ipaddress.IPv6Network
    size = 1 << (first.max_prefixlen - length)
    cur, stop, idx = int(first), int(last), 0
    found: list[IPv4Network | IPv6Network] = []
    while cur <= stop and len(found) < limit:
        # Ranges that end before `cur` can never matter again: `cur` only grows.
        while idx < len(occupied) and occupied[idx][1] < cur:
            idx += 1
        if idx < len(occupied) and occupied[idx][0] <= cur + size - 1:
            # Jump to the first boundary (counted from SubnetMin) past this taken range.
            cur += -(-(occupied[idx][1] + 1 - cur) // size) * size
            continue
        found.append(net_cls((cur, length)))
        cur += size
    return found


def _candidates(previous, enabled, rng_fn, config, occupied, rng) -> list[Network]:
    if not enabled:
        return []
    first, last, length = rng_fn(config)
    bag = free_subnets(first, last, length, occupied)
    rng.shuffle(bag)  # shuffled bag: the first entry is flannel's uniform random pick
    if (previous is not None and _compatible(previous, True, rng_fn, config)
            and not _overlaps(previous, occupied)):
        bag = [previous] + [s for s in bag if s != previous]
    return bag


def plan_acquire(request: AcquireRequest, leases: list[Lease],
                 rng: random.Random | None = None) -> AcquirePlan:
    """Decide how to acquire a lease for `request` given the live `leases`.

    A lease is ours when its PublicIP equals ours (flannel's rule). The first compatible
    one is reused; our other leases are deleted (incompatible ones as flannel does; a
    node holds one subnet, so extra compatible ones are leaks from an earlier crash).
    Candidates are only computed when nothing is reused; empty means out of subnets.
    """
    config = request.config
    ours = [lease for lease in leases if lease.attrs.public_ip == request.attrs.public_ip]
    plan = AcquirePlan()
    for lease in ours:
        if plan.reuse is None and is_compatible(lease, config):
            plan.reuse = lease
        else:
            plan.delete.append(lease)
    if plan.reuse is not None:
        return plan
    rng = rng or random.SystemRandom()
    # Our deleted leases are free again (flannel still counts them; freeing is kinder).
    others = [lease for lease in leases if lease not in plan.delete]
    # each list comes from one family's subnet range
    plan.candidates = cast(list[IPv4Network], _candidates(request.previous_subnet, config.enable_ipv4, subnet_range,
                                                          config, _occupied([lease.subnet for lease in others]), rng))
    plan.ipv6_candidates = cast(list[IPv6Network], _candidates(request.previous_ipv6_subnet, config.enable_ipv6,
                                                               ipv6_subnet_range, config,
                                                               _occupied([lease.ipv6_subnet for lease in others]), rng))
    return plan


def out_of_subnets(plan: AcquirePlan, config) -> bool:
    """True when a family the config enables has no candidate left."""
    return ((config.enable_ipv4 and not plan.candidates)
            or (config.enable_ipv6 and not plan.ipv6_candidates))
