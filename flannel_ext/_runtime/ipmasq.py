"""`--ip-masq`: NAT pod traffic that leaves the cluster network, as flanneld does.

flanneld (its startup steps 11-12, see Documentation/migrating-from-flannel.md;
`pkg/trafficmngr/nftables`) installs, per IPv4 network and, with EnableIPv6, per IPv6
network (multicast is ff00::/8 there):
  postrouting (nat):  kube-proxy mark 0x4000/0x4000        -> return (no double NAT)
                      pod subnet   -> cluster network       -> return
                      cluster net  -> pod subnet            -> return
                      !cluster net -> pod subnet            -> return (external traffic to a pod
                                                               keeps its client address)
                      pod subnet   -> !224.0.0.0/4          -> masquerade fully-random
                      !cluster net -> cluster network       -> masquerade fully-random (host to pods)
  forward (filter):   accept from and to the cluster network (its FLANNEL-FWD chain)
Here they live in one table per family, ``ip flannel-ext`` and ``ip6 flannel-ext``, both
replaced as a whole in a single `nft -f -` transaction: setup is idempotent, a half-applied
rule set is never visible, and teardown removes exactly what setup added. Nothing outside
these tables is touched.
"""
from __future__ import annotations

import ipaddress
import shutil

from flannel_ext._util.errors import ConfigError, FlannelExtError
from flannel_ext._util.netns import in_ns, sh

TABLE = "flannel-ext"
KUBE_PROXY_MARK = "0x4000"
MULTICAST = {"ip": "224.0.0.0/4", "ip6": "ff00::/8"}
_VERSION = {"ip": 4, "ip6": 6}


def _net(value, what: str, family: str = "ip") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    version = _VERSION[family]
    try:
        net = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        net = None
    if net is None or net.version != version:
        raise ConfigError("--ip-masq", what, str(value), f"must be an IPv{version} CIDR") from None
    return net


def _table(family: str, net, pod, rnd: str) -> str:
    """One family's table: flanneld's masquerade and forward rules (the module docstring)."""
    addr, multicast = family, MULTICAST[family]
    return f"""\
add table {family} {TABLE}
delete table {family} {TABLE}
table {family} {TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & {KUBE_PROXY_MARK} == {KUBE_PROXY_MARK} return comment "kube-proxy marked: no double NAT"
        {addr} saddr {pod} {addr} daddr {net} return comment "pod to cluster: keep the source"
        {addr} saddr {net} {addr} daddr {pod} return comment "cluster to pod: keep the source"
        {addr} saddr != {net} {addr} daddr {pod} return comment "outside to a local pod: keep the client address"
        {addr} saddr {pod} {addr} daddr != {multicast} masquerade{rnd} comment "pod leaving the cluster"
        {addr} saddr != {net} {addr} daddr {net} masquerade{rnd} comment "host to the cluster"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        {addr} saddr {net} accept comment "flannel FLANNEL-FWD"
        {addr} daddr {net} accept comment "flannel FLANNEL-FWD"
    }}
}}
"""


def ruleset(network, subnet, *, ipv6_network=None, ipv6_subnet=None, fully_random: bool = True) -> str:
    """The nft script that (re)creates the tables; `subnet`/`ipv6_subnet` are this node's
    lease. Either pair may be None (an IPv6-only or IPv4-only network)."""
    rnd = " fully-random" if fully_random else ""
    script = ""
    # `add` then `delete` then define: one transaction that works whether or not the
    # table exists (nft 1.0.6 has no `destroy`).
    if network is not None or subnet is not None:
        script += _table("ip", _net(network, "Network"), _net(subnet, "subnet"), rnd)
    if ipv6_network is not None or ipv6_subnet is not None:
        script += _table("ip6", _net(ipv6_network, "IPv6Network", "ip6"),
                         _net(ipv6_subnet, "IPv6 subnet", "ip6"), rnd)
    if not script:
        raise ConfigError("--ip-masq", None, None, "no network to masquerade",
                          "set Network (or EnableIPv6 and IPv6Network) in net-conf.json")
    return script


def _nft(script: str, netns: str | None) -> None:
    if not shutil.which("nft"):
        raise FlannelExtError("--ip-masq needs nftables: install the `nftables` package")
    sh(in_ns(netns, ["nft", "-f", "-"]), input=script)


def setup_ip_masq(network, subnet, *, ipv6_network=None, ipv6_subnet=None, fully_random: bool = True,
                  netns: str | None = None) -> None:
    """Install (or replace) the masquerade and forward rules in the current namespace
    (or in `netns`, through `ip netns exec`); a family not configured has no table."""
    script = ruleset(network, subnet, ipv6_network=ipv6_network, ipv6_subnet=ipv6_subnet,
                     fully_random=fully_random)
    for family in ("ip", "ip6"):     # a family turned off since the last setup: drop its table
        if f"table {family} {TABLE} {{" not in script:
            script += f"add table {family} {TABLE}\ndelete table {family} {TABLE}\n"
    _nft(script, netns)


def teardown_ip_masq(*, netns: str | None = None) -> None:
    """Remove both tables; a missing table is fine."""
    _nft("".join(f"add table {f} {TABLE}\ndelete table {f} {TABLE}\n" for f in ("ip", "ip6")), netns)
