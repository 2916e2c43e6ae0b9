"""Will a lab fit the kernel's neighbour tables? `lab up` asks before it creates anything.

All the lab's namespaces share one ARP table and one NDP table (``_util.neigh``), so a
100-node lab needs ~10,000 IPv4 entries where the default ``gc_thresh3`` is 1024. Past
that limit the underlay itself breaks ("No buffer space available"), and every route,
neighbour and FDB entry still looks right. Only entries the kernel may collect count
against the limit: permanent ones (the vxlan recipes' VTEP neighbours) and externally
learned ones do not (Linux 4.19+, ``gc_entries``). The estimate, per node:

* IPv4: one underlay ARP entry per other node (host-gw gateways, vxlan tunnel ends), plus
  one per local pod on cni0; per pod, its gateway and the other pods of its node.
* IPv6: the NOARP multicast entries every interface makes (all-routers, MLDv2 and its
  solicited-node group): up to 4 per interface, counted on the node (eth0, cni0, vxlan
  device, one veth per pod), the hub port and each pod's eth0.

The kernel does not publish how many of the entries in use count (``gc_entries``), and
``/proc/net/stat/arp_cache`` also counts permanent ones (a 50,000-peer vxlan node holds
50,000), so the decision rests on the lab's own estimate; the entries in use are shown.
`plan` proposes thresholds with room to spare; `apply` writes them and returns the old
values, which `lab down` gives back to `restore`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from flannel_ext._util import neigh
from flannel_ext._config.netconf import load_netconf
from flannel_ext._lab.state import Lab, LabError

V6_PER_INTERFACE = 4
FIT_SHARE = 0.75                            # of gc_thresh3 a lab may plan to use
INOTIFY = "fs.inotify.max_user_instances"   # per user; 128 by default
INOTIFY_PER_DAEMON = 2                      # the sqlite store's watch, --watch's hot reload
INOTIFY_PER_POLICY_AGENT = 1                # the agent's watch on cluster.json


def is_vxlan(net_conf: str) -> bool:
    """Does this net-conf build a vxlan overlay (a vxlan device per node)?"""
    conf = load_netconf(net_conf, check_subnets=False)
    words = [conf.backend_type] + [str(v) for v in conf.backend.values()]
    return any("vxlan" in word.lower() for word in words)


def estimate(nodes: int, pods_per_node: int, vxlan: bool) -> dict[str, int]:
    """Neighbour entries a lab of this shape makes in each table, once every pair has talked."""
    peers, pods = max(0, nodes - 1), pods_per_node
    per_node_v4 = peers + pods + pods * pods                         # node + its pods
    interfaces = (3 if vxlan else 2) + pods + 1 + pods               # node, hub port, pods' eth0
    return {"ipv4": nodes * per_node_v4, "ipv6": nodes * interfaces * V6_PER_INTERFACE}


@dataclass
class Plan:
    needed: dict[str, int]                                  # family -> entries the lab will add
    tables: dict[str, neigh.NeighTable]                     # what the kernel has now
    settings: dict[str, int] = field(default_factory=dict)  # sysctl -> value to write
    short: list[str] = field(default_factory=list)          # one line per limit the lab exceeds

    @property
    def fits(self) -> bool:
        return not self.settings

    def sysctl_command(self) -> str:
        return "sysctl -w " + " ".join(f"{name}={value}" for name, value in self.settings.items())

    def refusal(self, nodes: int) -> str:
        lines = [f"a {nodes}-node lab does not fit the kernel's limits (neighbour tables are shared by "
                 "every namespace; past gc_thresh3 the underlay fails with ENOBUFS):"]
        lines += [f"  {line}" for line in self.short]
        lines.append(f"raise the limits with `{self.sysctl_command()}`, or pass --tune-kernel to have "
                     "`lab up` set them and `lab down` restore them")
        return "\n".join(lines)


def plan(nodes: int, pods_per_node: int, vxlan: bool, proc: str = "/proc", *, policy: bool = False) -> Plan:
    """Compare the estimate with the tables; `settings` is empty when the lab fits.

    Fits: the estimate stays within 3/4 of gc_thresh3 (it is an upper bound: every pair
    has talked; the rest is left to everything else on the machine). Proposed:
    gc_thresh1 = the estimate + the entries in use (never collected below it),
    gc_thresh2 = 2x, gc_thresh3 = 4x, rounded up to 1024, never lower than now."""
    needed = estimate(nodes, pods_per_node, vxlan)
    result = Plan(needed, {})
    for family in ("ipv4", "ipv6"):
        table = neigh.read_table(family, proc)
        if table is None:
            continue
        result.tables[family] = table
        total = table.entries + needed[family]
        t1, t2, t3 = table.thresholds
        if needed[family] <= FIT_SHARE * t3:
            continue
        result.short.append(f"{family} neighbours: ~{needed[family]} for the lab ({table.entries} in use, "
                            f"permanent ones included), gc_thresh3 = {t3}")
        for level, (current, wanted) in enumerate(zip((t1, t2, t3), (total, 2 * total, 4 * total), strict=True), 1):
            result.settings[neigh.sysctl_name(family, level)] = max(current, _round_up(wanted))
    _plan_inotify(result, nodes * (INOTIFY_PER_DAEMON + (INOTIFY_PER_POLICY_AGENT if policy else 0)), proc)
    return result


def _plan_inotify(result: Plan, needed: int, proc: str) -> None:
    """Each daemon holds inotify instances; past the per-user limit the reloader dies."""
    try:
        limit = neigh.read_sysctl(INOTIFY, proc)
    except (OSError, ValueError):
        return
    in_use = inotify_in_use(proc)
    if in_use + needed > limit:
        result.short.append(f"inotify instances: {needed} for the daemons + {in_use} in use = "
                            f"{in_use + needed}, {INOTIFY} = {limit}")
        result.settings[INOTIFY] = _round_up(2 * (in_use + needed), 128)


def inotify_in_use(proc: str = "/proc") -> int:
    """inotify instances open now (every process's fds; the limit is per user, we are root)."""
    count = 0
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                count += os.readlink(os.path.join(fd_dir, fd)) == "anon_inode:inotify"
            except OSError:
                pass
    return count


def _round_up(value: int, step: int = 1024) -> int:
    return -(-value // step) * step


def apply(settings: dict[str, int], proc: str = "/proc") -> dict[str, int]:
    """Write `settings` (thresholds in ascending order, so 1 <= 2 <= 3 holds throughout);
    returns name -> old value for `restore`. Half-applied settings are undone on failure."""
    old: dict[str, int] = {}
    try:
        for name in sorted(settings, key=_raise_order):
            old[name] = neigh.read_sysctl(name, proc)
            neigh.write_sysctl(name, settings[name], proc)
    except OSError:
        restore(old, settings, proc)
        raise
    return old


def restore(old: dict[str, int], applied: dict[str, int], proc: str = "/proc") -> list[str]:
    """Put back the values `apply` replaced; a value someone changed since is left alone.
    Returns the sysctls restored."""
    done = []
    for name in sorted(old, key=_raise_order, reverse=True):      # gc_thresh3 last when lowering
        try:
            if neigh.read_sysctl(name, proc) == applied.get(name):
                neigh.write_sysctl(name, old[name], proc)
                done.append(name)
        except (OSError, ValueError):
            continue
    return done


def _raise_order(name: str) -> tuple[int, str]:
    """gc_thresh3 before 2 before 1 when raising (the kernel wants thresh1 <= 2 <= 3)."""
    return (-int(name[-1]) if name[-1].isdigit() else 0, name)


def full_table_hint(before: dict[str, neigh.NeighTable], proc: str = "/proc") -> str | None:
    """Name a full neighbour table when it is the cause of failures: it refused allocations
    (table_fulls grew) while the check ran."""
    for family, old in before.items():
        now = neigh.read_table(family, proc)
        if now is None:
            continue
        rose = now.table_fulls - old.table_fulls
        if rose > 0:
            return (f"the kernel's {family} neighbour table is full ({now.entries} entries, gc_thresh3 = "
                    f"{now.thresholds[2]}, table_fulls +{rose} during this check, "
                    f"/proc/net/stat/{neigh.STAT_FILES[family]}): the underlay cannot resolve peers; "
                    f"raise {neigh.sysctl_name(family, 3)} (`lab up --tune-kernel` does)")
    return None


def tables(proc: str = "/proc") -> dict[str, neigh.NeighTable]:
    found = {}
    for family in ("ipv4", "ipv6"):
        table = neigh.read_table(family, proc)
        if table is not None:
            found[family] = table
    return found


# -- the lab's use ------------------------------------------------------------------------

def check_fits(nodes: int, pods_per_node: int, net_conf: str, tune: bool, proc: str = "/proc", *,
               policy: bool = False) -> Plan:
    """`lab up`'s pre-check: refuse (with the exact sysctl command) unless it fits or `tune`."""
    result = plan(nodes, pods_per_node, is_vxlan(net_conf), proc, policy=policy)
    if not result.fits and not tune:
        raise LabError(result.refusal(nodes))
    return result


def tune_for(lab: Lab, result: Plan, out: Callable[[str], None], proc: str = "/proc") -> None:
    """Apply the plan's settings and record the old values in the lab (saved at once)."""
    if result.fits:
        return
    lab.kernel = {"old": apply(result.settings, proc), "set": dict(result.settings)}
    lab.save()
    out(f"kernel: {result.sysctl_command()} (`lab down` restores the old values)")


def untune(lab: Lab | None, out: Callable[[str], None], proc: str = "/proc") -> None:
    """`lab down`: give back the thresholds `lab up --tune-kernel` replaced."""
    if lab is None or not lab.kernel:
        return
    done = restore(lab.kernel.get("old", {}), lab.kernel.get("set", {}), proc)
    if done:
        out("kernel: restored " + " ".join(f"{name}={lab.kernel['old'][name]}" for name in done))
    lab.kernel = {}
