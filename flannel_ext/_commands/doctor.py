"""`flannel-ext doctor`: is this machine ready to be a node? One line per check.

Each line is ``ok``, ``warn`` or ``fail``, the check, what was found and, unless ok,
what to do. Exit 0 when nothing failed, 1 otherwise. Nothing is changed: the store is
opened read-only and no module is loaded.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannel_ext._commands import flags, store_args
from flannel_ext._config import paths
from flannel_ext._config.netconf import load_netconf
from flannel_ext._runtime import subnetenv
from flannel_ext._util.errors import FlannelExtError

CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
CNI_PATH = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"
OUR_CNI_TYPES = ("flannel", "flannel-ext-cni")
# (capability number, name, needed for)
CAPABILITIES = ((12, "CAP_NET_ADMIN", "routes, links, neighbours and nftables"),
                (13, "CAP_NET_RAW", "the CNI bridge plugin's ARP and raw sockets"))
GC_THRESH3 = "/proc/sys/net/ipv4/neigh/default/gc_thresh3"


@dataclass(frozen=True)
class Check:
    status: str      # ok | warn | fail
    name: str
    found: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<5} {self.name}: {self.found}" + (f"; {self.fix}" if self.fix else "")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help="check this machine for a node (tools, kernel, files, store)",
                              description="Check this machine for a node: one ok/warn/fail line per check, with "
                                          "what to do; exit 1 if a check failed. Nothing is changed.")
    p.add_argument("--net-conf", "--net-config-path", dest="net_conf", default=None, metavar="FILE",
                   help="net-conf.json to check the PodCIDR against (default: subnet.env's FLANNEL_NETWORK)")
    p.add_argument("--subnet-file", default=paths.SUBNET_FILE, metavar="FILE",
                   help="subnet.env (default %(default)s)")
    p.add_argument("--cni-path", default=os.environ.get("CNI_PATH") or CNI_PATH, metavar="DIRS",
                   help=f"where the CNI plugins are, colon-separated (default $CNI_PATH or {CNI_PATH})")
    p.add_argument("--cni-conf-dir", default=CNI_CONF_DIR, metavar="DIR",
                   help="the container runtime's CNI config directory (default %(default)s)")
    store_args.add_store_arguments(p)
    flags.flanneld_style(p)        # the same flags and FLANNELD_* variables as `run`
    p.set_defaults(func=run_doctor)


def check_tools() -> Iterator[Check]:
    for tool, package in (("ip", "iproute2"), ("bridge", "iproute2"), ("nft", "nftables")):
        found = shutil.which(tool)
        yield (Check("ok", tool, found) if found else
               Check("fail", tool, "not on PATH", f"install the {package} package"))


def find_plugin(cni_path: str, plugin: str) -> str | None:
    """The executable `plugin` in the first CNI_PATH directory that has it."""
    return next((os.path.join(d, plugin) for d in cni_path.split(":")
                 if d and os.access(os.path.join(d, plugin), os.X_OK)), None)


def check_cni_plugins(cni_path: str) -> Iterator[Check]:
    for plugin in CNI_PLUGINS:
        found = find_plugin(cni_path, plugin)
        yield (Check("ok", f"CNI plugin {plugin}", found) if found else
               Check("fail", f"CNI plugin {plugin}", f"not in {cni_path}",
                     "install containernetworking-plugins, or point --cni-path/$CNI_PATH at them"))


def check_vxlan_module(sys_module: str = "/sys/module") -> Check:
    if os.path.isdir(os.path.join(sys_module, "vxlan")):
        return Check("ok", "vxlan module", "loaded")
    release = os.uname().release
    shipped = list(Path("/lib/modules", release).rglob("vxlan.ko*")) if Path("/lib/modules", release).is_dir() else []
    if shipped:
        return Check("warn", "vxlan module", "not loaded (the kernel loads it when a VXLAN link is created)",
                     "or run `modprobe vxlan` now; only VXLAN recipes need it")
    return Check("warn", "vxlan module", f"not loaded and not found for kernel {release}",
                 "VXLAN recipes will fail: install the kernel's extra modules (host-gw needs none)")


def effective_capabilities(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_capabilities(status_text: str) -> Iterator[Check]:
    have = effective_capabilities(status_text)
    for number, name, why in CAPABILITIES:
        if have & (1 << number):
            yield Check("ok", name, "effective")
        else:
            yield Check("fail" if name == "CAP_NET_ADMIN" else "warn", name, f"missing (needed for {why})",
                        f"run as root, or grant {name.removeprefix('CAP_')} (a pod's securityContext."
                        "capabilities.add, systemd's AmbientCapabilities=)")


def check_subnet_env(path: str) -> tuple[Check, dict[str, str]]:
    if not os.path.exists(path):
        return Check("warn", "subnet.env", f"{path} does not exist yet",
                     "it is written once `flannel-ext run` holds a lease"), {}
    values = subnetenv.read(path)
    missing = [k for k in ("FLANNEL_MTU", "FLANNEL_IPMASQ") if k not in values]
    if not any(k in values for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET")):
        missing.insert(0, "FLANNEL_SUBNET")
    if missing:
        return Check("fail", "subnet.env", f"{path} lacks {', '.join(missing)}",
                     "the CNI plugin refuses it: restart `flannel-ext run` to rewrite it"), values
    shown = " ".join(f"{k}={values[k]}" for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU")
                     if k in values)
    return Check("ok", "subnet.env", f"{path}: {shown}"), values


def _conflist_types(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    if not isinstance(plugins, list):
        raise ValueError("no \"plugins\" list")
    return [str(p.get("type")) for p in plugins if isinstance(p, dict)]


def check_conflist(conf_dir: str, cni_path: str) -> Check:
    """The runtime uses the first config file in lexical order: ours should be it, and
    every plugin it chains must be in CNI_PATH."""
    files = sorted(p for p in Path(conf_dir).glob("*") if p.suffix in (".conf", ".conflist", ".json"))
    if not files:
        return Check("warn", "CNI config", f"none in {conf_dir}",
                     "install the conflist (`flannel-ext manifest` ships it; see Documentation/cni.md)")
    first = files[0]
    if first.suffix != ".conflist":
        return Check("warn", "CNI config", f"{first} is used first and is not a .conflist",
                     "use a .conflist (see Documentation/cni.md)")
    try:
        types = _conflist_types(first)
    except (OSError, ValueError) as exc:
        return Check("fail", "CNI config", f"{first}: not a usable conflist ({exc})",
                     "fix the JSON or reinstall it")
    if not any(t in OUR_CNI_TYPES for t in types):
        ours = [p.name for p in files[1:] if p.suffix == ".conflist" and _types_or_empty(p) & set(OUR_CNI_TYPES)]
        hint = f"{', '.join(ours)} comes later" if ours else "nor does any other conflist there"
        return Check("warn", "CNI config", f"{first} (used first) has no flannel plugin ({hint})",
                     "rename ours to sort first, e.g. 10-flannel.conflist")
    missing = [t for t in types if not find_plugin(cni_path, t)]
    if missing:
        return Check("fail", "CNI config", f"{first} chains {', '.join(missing)}, not in {cni_path}",
                     "install the plugin there (the manifest's init container copies flannel-ext-cni)")
    return Check("ok", "CNI config", f"{first}: plugins {', '.join(types)}")


def _types_or_empty(path: Path) -> set[str]:
    try:
        return set(_conflist_types(path))
    except (OSError, ValueError):
        return set()


def check_pod_cidr(values: dict[str, str], net_conf: str | None) -> Iterator[Check]:
    """FLANNEL_SUBNET (the node's PodCIDR) inside the Network, as kube's store requires."""
    networks: dict[str, Any] = {}
    if net_conf:
        try:
            conf = load_netconf(net_conf, check_subnets=False)
            networks = {"FLANNEL_SUBNET": conf.network, "FLANNEL_IPV6_SUBNET": conf.ipv6_network}
            yield Check("ok", "net-conf.json", f"{net_conf}: Network {conf.network}")
        except FlannelExtError as exc:
            yield Check("fail", "net-conf.json", str(exc))
            return
    for key, net_key in (("FLANNEL_SUBNET", "FLANNEL_NETWORK"), ("FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK")):
        if key not in values:
            continue
        try:
            subnet = ipaddress.ip_interface(values[key].split(",")[0]).network
            network = networks.get(key) or (ipaddress.ip_network(values[net_key].split(",")[0])
                                            if net_key in values else None)
        except ValueError as exc:
            yield Check("fail", "PodCIDR", f"{key}={values[key]}: {exc}", "restart `flannel-ext run`")
            continue
        source = net_conf or net_key
        if network is None:
            yield Check("warn", "PodCIDR", f"{key}={subnet}: no Network to check it against",
                        "pass --net-conf FILE")
        elif subnet.version == network.version and subnet.subnet_of(network):   # type: ignore[arg-type]
            yield Check("ok", "PodCIDR", f"{subnet} is inside {network} ({source})")
        else:
            yield Check("fail", "PodCIDR", f"{subnet} is not inside {network} ({source})",
                        "make Network cover the cluster's --cluster-cidr, or fix the node's podCIDR")


def check_neighbours(leases: int | None, subnet_hosts: int, gc_thresh3: int | None) -> Check:
    """Every remote lease takes a neighbour entry (its gateway or VTEP) and every local pod
    one more; past gc_thresh3 the kernel drops entries and traffic to some nodes stalls."""
    if gc_thresh3 is None:
        return Check("warn", "neighbour table", f"cannot read {GC_THRESH3}")
    if leases is None:
        return Check("warn", "neighbour table", f"gc_thresh3={gc_thresh3}; lease count unknown (store not read)")
    need = leases + subnet_hosts
    found = f"gc_thresh3={gc_thresh3}, about {need} entries needed ({leases} leases + {subnet_hosts} local pods)"
    if need > gc_thresh3:
        return Check("warn", "neighbour table", found,
                     f"raise net.ipv4.neigh.default.gc_thresh3 (and gc_thresh2) to at least {2 * need}")
    return Check("ok", "neighbour table", found)


def check_store(args: argparse.Namespace) -> tuple[Check, int | None]:
    from flannel_ext._stores.readonly import open_read_only   # the stores load only when used

    url = store_args.store_url(args)
    try:
        store = open_read_only(url, missing_ok=False, **store_args.store_options(args))
        try:
            snap = store.list()
        finally:
            store.close()
    except FlannelExtError as exc:
        fix = "check --store/--etcd-endpoints and that the store is up"
        if url.startswith("sqlite:") and "no such file" in str(exc):
            return Check("warn", "store", f"{url}: not created yet", "`flannel-ext run` creates it"), 0
        return Check("fail", "store", f"{url}: {exc}", fix), None
    rejected = f", {len(snap.rejected)} rejected (see `flannel-ext leases`)" if snap.rejected else ""
    return Check("warn" if rejected else "ok", "store", f"{url}: {len(snap.leases)} lease(s){rejected}"), \
        len(snap.leases)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _local_pods(values: dict[str, str]) -> int:
    """Addresses for pods in this node's IPv4 subnet (a /24 when subnet.env says nothing)."""
    try:
        return max(1, ipaddress.IPv4Interface(values["FLANNEL_SUBNET"].split(",")[0]).network.num_addresses - 2)
    except (KeyError, ValueError):
        return 254


def run_checks(args: argparse.Namespace) -> list[Check]:
    checks = [*check_tools(), *check_cni_plugins(args.cni_path), check_vxlan_module(),
              *check_capabilities(Path("/proc/self/status").read_text())]
    env_check, values = check_subnet_env(args.subnet_file)
    checks += [env_check, check_conflist(args.cni_conf_dir, args.cni_path), *check_pod_cidr(values, args.net_conf)]
    store_check, leases = check_store(args)
    checks += [store_check, check_neighbours(leases, _local_pods(values), _read_int(GC_THRESH3))]
    return checks


def run_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    print(f"{len(checks)} checks: {len(failed)} failed, {len(warned)} warnings")
    return 1 if failed else 0
