"""flannel's subnet choice (tryAcquireLease / allocateSubnet), as `plan_acquire` makes it."""
import ipaddress
import random

import pytest

from flannel_ext._config.netconf import NetConf
from flannel_ext._stores.allocate import (MAX_CANDIDATES, free_subnets, ipv6_subnet_range,
                                         out_of_subnets, plan_acquire, subnet_range)
from flannel_ext._stores.base import AcquireRequest
from flannel_ext._stores.lease import Lease, LeaseAttrs

V4, V6, A4 = ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Address
ME = LeaseAttrs.with_string_data("192.168.1.10", "me")


def conf(network="10.5.0.0/16", subnet_len=0, lo=None, hi=None, **kw):
    return NetConf(network=V4(network), subnet_len=subnet_len,
                   subnet_min=A4(lo) if lo else None, subnet_max=A4(hi) if hi else None, **kw)


def other(subnet, ip="192.168.1.99", ipv6=None):
    return Lease(V4(subnet), LeaseAttrs.with_string_data(ip, "x"), V6(ipv6) if ipv6 else None, 1e12)


def naive_free(first, last, length, subnets, limit=MAX_CANDIDATES):
    """flannel's OuterLoop, literally: every subnet against every lease."""
    bag, size = [], 1 << (32 - length)
    for start in range(int(first), int(last) + 1, size):
        if len(bag) >= limit:
            break
        sn = V4((start, length))
        if not any(sn.overlaps(s) for s in subnets):
            bag.append(sn)
    return bag


@pytest.mark.parametrize("network, expected", [
    ("10.5.0.0/16", ("10.5.1.0", "10.5.254.0", 24)),
    ("10.0.0.0/8", ("10.0.1.0", "10.255.254.0", 24)),
    ("10.5.0.0/22", ("10.5.1.0", "10.5.2.0", 24)),
    ("10.5.0.0/24", ("10.5.0.64", "10.5.0.128", 26)),   # prefix + 2
    ("10.5.0.0/28", ("10.5.0.4", "10.5.0.8", 30)),
])
def test_subnet_range_defaults_are_flannels(network, expected):
    first, last, length = subnet_range(conf(network))
    assert (str(first), str(last), length) == expected


def test_subnet_range_keeps_configured_values():
    assert subnet_range(conf(subnet_len=20, lo="10.5.16.0", hi="10.5.32.0")) == (
        A4("10.5.16.0"), A4("10.5.32.0"), 20)
    c6 = NetConf(network=V4("10.5.0.0/16"), enable_ipv6=True, ipv6_network=V6("fc00::/48"))
    assert ipv6_subnet_range(c6) == (ipaddress.IPv6Address("fc00:0:0:1::"),
                                     ipaddress.IPv6Address("fc00:0:0:fffe::"), 64)


def test_reuses_our_compatible_lease_by_public_ip():
    mine = Lease(V4("10.5.42.0/24"), LeaseAttrs(public_ip="192.168.1.10"), expiration=5.0)
    plan = plan_acquire(AcquireRequest(ME, conf()), [other("10.5.1.0/24"), mine])
    assert plan.reuse == mine and plan.delete == [] and plan.candidates == []


@pytest.mark.parametrize("subnet", ["10.5.0.0/24",     # below SubnetMin
                                    "10.5.255.0/24",   # above SubnetMax
                                    "10.5.42.0/25",    # wrong length
                                    "10.6.1.0/24"])    # outside Network
def test_deletes_our_incompatible_lease_and_allocates(subnet):
    mine = Lease(V4(subnet), LeaseAttrs(public_ip="192.168.1.10"))
    plan = plan_acquire(AcquireRequest(ME, conf()), [mine], random.Random(1))
    assert plan.reuse is None and plan.delete == [mine]
    assert len(plan.candidates) == MAX_CANDIDATES


def test_ipv6_lease_is_incompatible_when_ipv6_is_disabled():
    mine = other("10.5.42.0/24", ip="192.168.1.10", ipv6="fc00:0:0:1::/64")
    plan = plan_acquire(AcquireRequest(ME, conf()), [mine])
    assert plan.delete == [mine]


def test_first_compatible_lease_of_ours_is_reused_and_duplicates_deleted():
    a, b = other("10.5.7.0/24", ip="192.168.1.10"), other("10.5.8.0/24", ip="192.168.1.10")
    bad = other("10.5.9.0/25", ip="192.168.1.10")
    plan = plan_acquire(AcquireRequest(ME, conf()), [bad, a, b])
    assert plan.reuse == a and plan.delete == [bad, b]


def test_previous_subnet_comes_first_when_free_and_compatible():
    request = AcquireRequest(ME, conf(), previous_subnet=V4("10.5.200.0/24"))
    plan = plan_acquire(request, [other("10.5.1.0/24")], random.Random(3))
    assert plan.candidates[0] == V4("10.5.200.0/24")
    assert len(plan.candidates) == 1 + MAX_CANDIDATES
    # Inside the first 100 it is not repeated.
    plan = plan_acquire(AcquireRequest(ME, conf(), previous_subnet=V4("10.5.20.0/24")), [])
    assert plan.candidates[0] == V4("10.5.20.0/24") and len(plan.candidates) == MAX_CANDIDATES


@pytest.mark.parametrize("previous, leases", [
    ("10.5.200.0/24", ["10.5.200.0/24"]),     # taken
    ("10.5.200.0/24", ["10.5.192.0/18"]),     # overlapped by a wider lease
    ("10.5.200.128/25", []),                  # wrong length
    ("10.5.255.0/24", []),                    # beyond SubnetMax
])
def test_previous_subnet_is_skipped_when_taken_or_incompatible(previous, leases):
    request = AcquireRequest(ME, conf(), previous_subnet=V4(previous))
    plan = plan_acquire(request, [other(s) for s in leases], random.Random(3))
    assert V4(previous) not in plan.candidates
    assert len(plan.candidates) == MAX_CANDIDATES


def test_candidates_are_the_first_100_free_in_random_order():
    taken = ["10.5.1.0/24", "10.5.3.0/24", "10.5.4.0/23", "10.5.16.0/20", "10.5.50.128/25"]
    config = conf()
    plan = plan_acquire(AcquireRequest(ME, config), [other(s) for s in taken], random.Random(7))
    first, last, length = subnet_range(config)
    expected = naive_free(first, last, length, [V4(s) for s in taken])
    assert sorted(plan.candidates) == expected
    assert plan.candidates != expected  # shuffled (fixed seed, so this is deterministic)
    assert V4("10.5.50.0/24") not in plan.candidates  # partly covered by a /25


def test_first_candidate_is_uniform_over_the_bag():
    config = conf("10.5.0.0/28")  # two /30 subnets between min and max
    seen = {plan_acquire(AcquireRequest(ME, config), [], random.Random(i)).candidates[0]
            for i in range(64)}
    assert seen == {V4("10.5.0.4/30"), V4("10.5.0.8/30")}


def test_default_rng_is_random():
    seen = {plan_acquire(AcquireRequest(ME, conf()), []).candidates[0] for _ in range(20)}
    assert len(seen) > 1


def test_matches_flannels_scan_on_random_layouts():
    rng = random.Random(11)
    config = conf("10.5.0.0/16", subnet_len=26, lo="10.5.0.64", hi="10.5.20.0")
    first, last, length = subnet_range(config)
    for _ in range(30):
        subnets = {V4((rng.randrange(0x0A050000, 0x0A051800) & ~((1 << (32 - p)) - 1), p))
                   for p in rng.choices([22, 24, 26, 27, 30], k=rng.randrange(0, 120))}
        plan = plan_acquire(AcquireRequest(ME, config), [other(str(s)) for s in subnets], rng)
        assert sorted(plan.candidates) == naive_free(first, last, length, list(subnets))


def test_out_of_subnets_gives_no_candidates():
    config = conf("10.5.0.0/28")
    plan = plan_acquire(AcquireRequest(ME, config), [other("10.5.0.4/30"), other("10.5.0.8/30")])
    assert plan.candidates == [] and out_of_subnets(plan, config)
    assert not out_of_subnets(plan_acquire(AcquireRequest(ME, config), [other("10.5.0.4/30")]),
                              config)


def test_large_network_skips_taken_ranges():
    # A /8 with 16-bit subnet space, all but 150 subnets taken.
    config = conf("10.0.0.0/8")
    first, last, _ = subnet_range(config)
    free = set(random.Random(5).sample(range(1, 65535), 150))
    leases = [Lease(V4((0x0A000000 + (i << 8), 24)), LeaseAttrs(public_ip="1.1.1.1"))
              for i in range(1, 65535) if i not in free]
    plan = plan_acquire(AcquireRequest(ME, config), leases)
    expected = [V4((0x0A000000 + (i << 8), 24)) for i in sorted(free)[:MAX_CANDIDATES]]
    assert sorted(plan.candidates) == expected


def test_free_subnets_respects_boundaries_counted_from_subnet_min():
    occupied = [(int(A4("10.5.1.5")), int(A4("10.5.1.5")))]  # one odd address inside 10.5.1.0/24
    got = free_subnets(A4("10.5.1.0"), A4("10.5.4.0"), 24, occupied)
    assert got == [V4("10.5.2.0/24"), V4("10.5.3.0/24"), V4("10.5.4.0/24")]


def test_ipv6_is_picked_independently():
    config = NetConf(network=V4("10.5.0.0/16"), enable_ipv6=True, ipv6_network=V6("fc00::/48"))
    leases = [other("10.5.1.0/24", ipv6="fc00:0:0:1::/64")]
    request = AcquireRequest(ME, config, previous_ipv6_subnet=V6("fc00:0:0:99::/64"))
    plan = plan_acquire(request, leases, random.Random(2))
    assert plan.ipv6_candidates[0] == V6("fc00:0:0:99::/64")
    assert V6("fc00:0:0:1::/64") not in plan.ipv6_candidates
    assert len(plan.ipv6_candidates) == 1 + MAX_CANDIDATES  # previous, then flannel's bag
    assert all(c.prefixlen == 64 for c in plan.ipv6_candidates)
    assert V4("10.5.1.0/24") not in plan.candidates


def test_ipv6_only_has_no_ipv4_candidates():
    config = NetConf(enable_ipv4=False, enable_ipv6=True, ipv6_network=V6("fc00::/56"))
    plan = plan_acquire(AcquireRequest(ME, config), [])
    assert plan.candidates == [] and plan.ipv6_candidates and not out_of_subnets(plan, config)
