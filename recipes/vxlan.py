"""vxlan as a Python hook, leaving the kernel as flannel's native vxlan backend does (Documentation/flanneld.md).

* pre_startup: device ``flannel.<VNI>`` (id VNI, dev = external interface, local = public
  IP, learning off, dstport = Port or the kernel's 8472, MTU = base MTU − 50). A matching
  device is reused, so a restart keeps its MAC; a mismatching one is recreated. Returns
  the device MAC, which becomes our backend data.
* post_startup: address ``<subnet IP>/32`` (other IPv4 addresses removed), link up.
* per remote node: permanent neighbour ``<subnet IP> lladdr <VTEP MAC>``, FDB ``<VTEP MAC>
  dst <public IP> self permanent``, ``route replace <subnet> via <subnet IP> onlink``; with
  DirectRouting and an on-link public IP, only ``route replace <subnet> via <public IP>``.
* shutdown: deletes the device (flannel never tears down; flannel-ext's ShutdownCommand does).
* warns once when its peers' underlay ARP entries (1 per peer) reach 75% of the kernel's
  ``net.ipv4.neigh.default.gc_thresh3`` (Documentation/lab.md, "The neighbour table").

Options (Backend keys, case-insensitive): VNI (1), Port (0 = kernel default 8472),
MTU (base MTU, default the interface's; the device gets MTU − 50), DirectRouting (false).
"""
from __future__ import annotations

import errno
import ipaddress
import json
import re
from typing import Any
from collections.abc import Sequence

from flannel_ext import HookContext, PermanentError, RemoteLease, TemporaryError

from flannel_ext import netlink as _netlink

VXLAN_OVERHEAD = 50          # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
KERNEL_DEFAULT_PORT = 8472
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _option(options: dict[str, Any], name: str, default: Any = None) -> Any:
    """A Backend key, matched case-insensitively as Go's encoding/json does."""
    for key, value in options.items():
        if key.lower() == name.lower():
            return value
    return default


def _flag(value: Any) -> bool:
    return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)


class VxlanHook(_netlink.BatchedRecipe):
    description = "VXLAN overlay like flannel's native vxlan (flannel.<VNI>, neigh+FDB+route per node)"
    # Native vxlan leases carry {"VNI":1,"VtepMAC":"…"}: accepting them allows mixed clusters.
    accepts_backend_types = ("extension", "vxlan")

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options)
        self.vni = int(_option(self.options, "VNI", 1) or 1)
        self.port = int(_option(self.options, "Port", 0) or 0)
        self.base_mtu = int(_option(self.options, "MTU", 0) or 0)
        self.direct_routing = _flag(_option(self.options, "DirectRouting", False))
        if not 0 < self.vni < 1 << 24:
            raise ValueError(f"VNI must be between 1 and 16777215, got {self.vni}")
        if not 0 <= self.port < 1 << 16:
            raise ValueError(f"Port must be between 0 and 65535, got {self.port}")
        self.device = f"flannel.{self.vni}"
        self.peers = _netlink.PeerCount("vxlan")   # leases programmed, for the neighbour-table warning

    # --- lifecycle -----------------------------------------------------------------
    def pre_startup(self, ctx: HookContext) -> str | None:
        if ctx.dry_run:
            ctx.recorded.append({"netlink": f"link ensure {self.device} type vxlan id {self.vni} "
                                 f"dev {ctx.iface} local {ctx.public_ip} mtu {self.mtu(ctx)}"})
            return None
        return self._ensure_device(ctx).address or None

    def post_startup(self, ctx: HookContext) -> None:
        if ctx.dry_run:
            ctx.recorded.append({"netlink": f"addr replace {ctx.subnet.network_address if ctx.subnet else '?'}"
                                 f"/32 dev {self.device}; link set {self.device} up"})
            return
        index = self._ensure_device(ctx).index
        if ctx.subnet is not None:
            own = ipaddress.IPv4Interface((ctx.subnet.network_address, 32))
            # Add ours before removing the others: dropping a device's last address
            # makes the kernel flush every route through it.
            _netlink.addr_replace(index, own)
            for address in _netlink.addresses(index):
                if address != own:
                    _netlink.addr_del(index, address)
        _netlink.link_set(index, up=True)

    def shutdown(self, ctx: HookContext) -> None:
        if ctx.dry_run:
            ctx.recorded.append({"netlink": f"link del {self.device}"})
            return
        link = _netlink.link_get(self.device)
        if link is not None:
            try:
                _netlink.link_del(link.index)
            except OSError as exc:
                if exc.errno != errno.ENODEV:   # already gone
                    raise

    def mtu(self, ctx: HookContext) -> int:
        return self._base_mtu(ctx) - VXLAN_OVERHEAD

    # --- remote leases -------------------------------------------------------------
    def parse_backend_data(self, lease: RemoteLease) -> str:
        """The VTEP MAC from a MAC string or flannel's ``{"VNI":1,"VtepMAC":"…"}``."""
        value: Any = lease.backend_data
        if lease.backend_data_raw:
            value = json.loads(lease.backend_data_raw)
        if isinstance(value, dict):
            vni = _option(value, "VNI", self.vni)
            if vni != self.vni:
                raise ValueError(f"remote VNI {vni!r} differs from ours ({self.vni})")
            value = _option(value, "VtepMAC", "")
        mac = value.strip().lower() if isinstance(value, str) else ""
        if not _MAC.match(mac) or int(mac[:2], 16) & 1:
            raise ValueError(f"backend data is not a unicast VTEP MAC: {value!r}")
        return mac

    # --- internals -----------------------------------------------------------------
    def _apply(self, op: str, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        dev = _netlink.ifindex(self.device)
        if dev is None and ctx.dry_run:
            dev = 0                         # record what would be sent once it exists
        elif dev is None:
            if op == "del":
                return                      # no device, nothing of ours can exist
            raise TemporaryError(f"vxlan: device {self.device} is missing; restart the daemon "
                                 "so pre_startup recreates it")
        ext = _netlink.ifindex(ctx.iface) if ctx.iface else None
        on_link = _netlink.OnLink(ext) if self.direct_routing and ext is not None else None
        failures: dict[str, BaseException] = {}
        with _netlink.Batch(record=ctx.recorded if ctx.dry_run else None) as batch:
            for lease in leases:
                if lease.subnet is None:
                    continue
                key, sip = _netlink.key_of(lease), str(lease.subnet.network_address)
                try:
                    mac = self._mac(lease)
                except ValueError as exc:
                    if op == "replace":
                        failures[key] = PermanentError(f"vxlan: {lease.subnet}: {exc}")
                        continue
                    mac = None              # still remove the route and neighbour
                if op == "replace" and on_link is not None and on_link(lease.public_ip):
                    batch.route(op, key, lease.subnet, gateway=lease.public_ip, oif=ext)
                elif op == "replace":
                    batch.neigh(op, key, dev, sip, mac)
                    batch.fdb(op, key, dev, mac, lease.public_ip)
                    batch.route(op, key, lease.subnet, gateway=sip, oif=dev, onlink=True)
                else:
                    batch.route(op, key, lease.subnet, oif=dev)
                    if self.direct_routing:
                        batch.route(op, key, lease.subnet, gateway=lease.public_ip)
                    batch.neigh(op, key, dev, sip)
                    if mac:
                        batch.fdb(op, key, dev, mac, lease.public_ip)
            for key, errors in batch.commit().items():
                failures[key] = _netlink.lease_error(errors)
        if not ctx.dry_run:
            self._count_peers(op, leases, failures, ctx)
        _netlink.raise_failures(failures, leases)

    def _count_peers(self, op: str, leases: Sequence[RemoteLease], failures: dict, ctx: HookContext) -> None:
        """Warn once when the peers' neighbour entries near the kernel's gc_thresh3: each
        peer costs an underlay ARP entry (its VTEP neighbour is permanent, which the limit
        does not count), and past the limit the kernel refuses new ones (traffic to new
        peers fails with ENOBUFS)."""
        for key in {_netlink.key_of(lease) for lease in leases} - set(failures):
            if op == "replace":
                self.peers.added(key, ctx.log.warning)
            else:
                self.peers.removed(key)

    def _mac(self, lease: RemoteLease) -> str:
        data = lease.data
        return data if isinstance(data, str) and _MAC.match(data) else self.parse_backend_data(lease)

    def _base_mtu(self, ctx: HookContext) -> int:
        if self.base_mtu:
            return self.base_mtu
        link = _netlink.link_get(ctx.iface) if ctx.iface else None
        return link.mtu if link is not None else ctx.iface_mtu

    def _ensure_device(self, ctx: HookContext) -> _netlink.Link:
        """The vxlan device as configured: reused if it matches, else (re)created."""
        link_index = _netlink.ifindex(ctx.iface) if ctx.iface else None
        if link_index is None:
            raise PermanentError(f"vxlan: external interface {ctx.iface!r} not found; "
                                 "start the daemon with --iface set to the underlay interface")
        link = _netlink.link_get(self.device)
        if link is not None:
            data = link.vxlan if link.kind == "vxlan" else None
            wanted = (self.vni, link_index, self.port or KERNEL_DEFAULT_PORT, 0)
            if data is None or wanted != (data.get("id"), data.get("link"), data.get("port"), data.get("learning")):
                ctx.log.info("vxlan: %s does not match the configuration; recreating it", self.device)
                _netlink.link_del(link.index)
                link = None
            elif ctx.public_ip and data.get("local") != ctx.public_ip:
                # The kernel changes `local` in place, which keeps the advertised MAC.
                _netlink.link_set(link.index, vxlan_local=ctx.public_ip)
        if link is None:
            _netlink.link_add_vxlan(self.device, self.vni, link_index, ctx.public_ip or None, self.port or None)
            link = _netlink.link_get(self.device)
            if link is None:
                raise TemporaryError(f"vxlan: {self.device} vanished right after it was created")
        mtu = self._base_mtu(ctx) - VXLAN_OVERHEAD
        if link.mtu != mtu:
            _netlink.link_set(link.index, mtu=mtu)
            link.mtu = mtu
        return link
