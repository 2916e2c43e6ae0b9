"""`--ip-masq`: NAT pod traffic that leaves the cluster network, as flanneld does.

flanneld (compat §6 steps 11-12; `pkg/trafficmngr/nftables`) installs, per IPv4 network:
  postrouting (nat):  kube-proxy mark 0x4000/0x4000        -> return (no double NAT)
                      pod subnet   -> cluster network       -> return
                      cluster net  -> pod subnet            -> return
                      !cluster net -> pod subnet            -> return (external traffic to a pod
                                                               keeps its client address)
                      pod subnet   -> !224.0.0.0/4          -> masquerade fully-random
                      !cluster net -> cluster network       -> masquerade fully-random (host to pods)
  forward (filter):   accept from and to the cluster network (its FLANNEL-FWD chain)
Here they live in one table, ``ip flannel-ext``, which is replaced as a whole in a single
`nft -f -` transaction: setup is idempotent, a half-applied rule set is never visible,
and teardown removes exactly what setup added. Nothing outside the table is touched.
"""
from __future__ import annotations

import ipaddress
import shutil

from flannel_ext._util.errors import ConfigError, FlannelExtError
from flannel_ext._util.netns import in_ns, sh

TABLE = "flannel-ext"
KUBE_PROXY_MARK = "0x4000"
MULTICAST = "224.0.0.0/4"


def _net(value, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value), strict=False)
    except ValueError:
        raise ConfigError("--ip-masq", what, str(value), "must be an IPv4 CIDR",
                          "the extension backend masquerades IPv4 only") from None


def ruleset(network, subnet, *, fully_random: bool = True) -> str:
    """The nft script that (re)creates the table; `subnet` is this node's lease."""
    net, pod = _net(network, "Network"), _net(subnet, "subnet")
    rnd = " fully-random" if fully_random else ""
    # `add` then `delete` then define: one transaction that works whether or not the
    # table exists (nft 1.0.6 has no `destroy`).
    return f"""\
add table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & {KUBE_PROXY_MARK} == {KUBE_PROXY_MARK} return comment "kube-proxy marked: no double NAT"
        ip saddr {pod} ip daddr {net} return comment "pod to cluster: keep the source"
        ip saddr {net} ip daddr {pod} return comment "cluster to pod: keep the source"
        ip saddr != {net} ip daddr {pod} return comment "outside to a local pod: keep the client address"
        ip saddr {pod} ip daddr != {MULTICAST} masquerade{rnd} comment "pod leaving the cluster"
        ip saddr != {net} ip daddr {net} masquerade{rnd} comment "host to the cluster"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip saddr {net} accept comment "flannel FLANNEL-FWD"
        ip daddr {net} accept comment "flannel FLANNEL-FWD"
    }}
}}
"""


def _nft(script: str, netns: str | None) -> None:
    if not shutil.which("nft"):
        raise FlannelExtError("--ip-masq needs nftables: install the `nftables` package")
    sh(in_ns(netns, ["nft", "-f", "-"]), input=script)


def setup_ip_masq(network, subnet, *, fully_random: bool = True, netns: str | None = None) -> None:
    """Install (or replace) the masquerade and forward rules in the current namespace
    (or in `netns`, through `ip netns exec`)."""
    _nft(ruleset(network, subnet, fully_random=fully_random), netns)


def teardown_ip_masq(*, netns: str | None = None) -> None:
    """Remove the table; a missing table is fine."""
    _nft(f"add table ip {TABLE}\ndelete table ip {TABLE}\n", netns)
