"""host-gw as a Python hook: a route to each remote subnet via that node's public IP.

Mirrors flannel's native host-gw (Documentation/flanneld.md): ``route replace <subnet> via <public ip>
dev <iface>``; removal deletes it. All nodes must share an L2 segment, so a public IP
that is not on-link through the external interface is refused (PermanentError) rather
than left for the kernel to reject with a vaguer "invalid gateway".

Net-conf::

    {"Network": "10.50.0.0/16", "Backend": {"Type": "extension", "Hook": "host-gw"}}
"""
from __future__ import annotations

from collections.abc import Sequence

from flannel_ext import HookContext, PermanentError, RemoteLease

from flannel_ext import netlink as _netlink


class HostGwHook(_netlink.BatchedRecipe):
    description = "Route each remote subnet via the node's public IP (nodes share one L2 segment)"
    # Native host-gw leases carry no backend data, so mixed clusters just work.
    accepts_backend_types = ("extension", "host-gw")

    def _apply(self, op: str, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        oif = _iface_index(ctx)
        failures: dict[str, BaseException] = {}
        on_link = _netlink.OnLink(oif) if op == "replace" else None
        with _netlink.Batch(record=ctx.recorded if ctx.dry_run else None) as batch:
            for lease in leases:
                if lease.subnet is None:
                    continue
                if on_link is not None and not on_link(lease.public_ip):
                    failures[_netlink.key_of(lease)] = PermanentError(
                        f"host-gw: {lease.subnet}: public IP {lease.public_ip} is not on-link via "
                        f"{ctx.iface} ({', '.join(map(str, on_link.prefixes())) or 'no connected prefix'}); "
                        "host-gw needs all nodes on one L2 segment, use vxlan otherwise")
                    continue
                batch.route(op, _netlink.key_of(lease), lease.subnet, gateway=lease.public_ip, oif=oif)
            for key, errors in batch.commit().items():
                failures[key] = _netlink.lease_error(errors)
        _netlink.raise_failures(failures, leases)


def _iface_index(ctx: HookContext) -> int:
    index = _netlink.ifindex(ctx.iface) if ctx.iface else None
    if index is None:
        raise PermanentError(f"host-gw: external interface {ctx.iface!r} not found; "
                             "start the daemon with --iface set to the underlay interface")
    return index
