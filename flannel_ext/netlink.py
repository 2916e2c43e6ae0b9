"""Pipelined rtnetlink for the recipes: many requests per sendmsg, errors mapped to leases.

pyroute2 makes one round trip per call (~1,200 entries/s), too slow for a node joining a
1,000-node cluster. Routes, neighbours and FDB entries are tiny fixed-layout messages, so
`Batch` packs them with `struct`, writes up to `chunk` of them per sendmsg and reads back
only the errors: the kernel processes a sendmsg's messages in order and acknowledges only
failures and the chunk's last message (the one with NLM_F_ACK), so one ACK closes a chunk.

Everything runs in the *current* network namespace: the daemon lives inside the node's.
One-off work (the vxlan device, its address, dumps) is in `flannel_ext._util.rtnl`,
re-exported here: importing pyroute2 cost each daemon ~20 MB of RSS.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from collections.abc import Hashable, Iterable, Sequence

from flannel_ext import BatchError, Hook, HookContext, RemoteLease, TemporaryError
from flannel_ext._util import rtnl
from flannel_ext._util.neigh import NeighTable, PeerCount, read_table as neigh_table
from flannel_ext._util.rtnl import F_ACK, F_CREATE, F_REPLACE, F_REQUEST, NETLINK_EXT_ACK, NETLINK_ROUTE, \
    NLMSG_ERROR, SOL_NETLINK
from flannel_ext._util.rtnl import Link, addr_del, addr_replace, addresses, link_add_vxlan, link_del, \
    link_get, link_set

__all__ = ["Batch", "BatchedRecipe", "Link", "NetlinkFailure", "OnLink", "addr_del", "addr_replace",
           "address_prefixes", "addresses", "connected_prefixes", "ifindex", "key_of", "lease_error",
           "link_add_vxlan", "link_del", "link_get", "link_set", "mac_bytes", "NeighTable", "neigh_table",
           "PeerCount",
           "on_link", "raise_failures"]

NETLINK_CAP_ACK = 10
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 26, 28, 29
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE, RTN_UNICAST = 254, 3, 0, 255, 1
RTNH_F_ONLINK = 0x4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT, NTF_SELF = 0x80, 0x02
AF_BRIDGE = 7

# Deleting something that is already gone is success: removal must be idempotent.
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}

_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_NDMSG = struct.Struct("=BBHiHBB")    # family, pad, pad, ifindex, state, flags, type


_attr = rtnl.attr
_HDR = rtnl.HDR


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@dataclass(frozen=True)
class NetlinkFailure(Exception):
    """One request the kernel refused: what it was, errno, and the kernel's extended ack."""

    what: str
    code: int
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.what}: {os.strerror(self.code)}{extra}"


class Batch:
    """Queue route/neigh/FDB requests tagged with a lease key; `commit` sends them all.

    ``commit()`` returns ``{tag: [NetlinkFailure, ...]}`` for the tags that failed; deletes
    of missing entries are not failures. Use as a context manager to close the socket.
    """

    def __init__(self, chunk: int = 256, record: list | None = None):
        self.chunk = chunk
        self.record = record          # dry run: requests are appended here, never sent
        self._queue: list[tuple[int, int, bytes, Hashable, str, bool]] = []
        self._sock: socket.socket | None = None
        self._seq = 0                  # per socket, so unique within this Batch

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __len__(self) -> int:
        return len(self._queue)

    # --- requests ---------------------------------------------------------------------
    def route(self, op: str, tag: Hashable, dst: ipaddress.IPv4Network, *, gateway: str | None = None,
              oif: int | None = None, onlink: bool = False) -> None:
        """``ip route replace|del <dst> [via <gateway>] [dev <oif>] [onlink]`` (main table)."""
        body = _RTMSG.pack(socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN,
                           RTPROT_BOOT if op == "replace" else 0,
                           RT_SCOPE_UNIVERSE if op == "replace" else RT_SCOPE_NOWHERE,
                           RTN_UNICAST if op == "replace" else 0,
                           RTNH_F_ONLINK if onlink else 0)
        body += _attr(RTA_DST, dst.network_address.packed)
        if gateway:
            body += _attr(RTA_GATEWAY, socket.inet_aton(gateway))
        if oif:
            body += _u32(RTA_OIF, oif)
        shown = f"route {op} {dst}" + (f" via {gateway}" if gateway else "") + (f" dev #{oif}" if oif else "")
        self._add(RTM_NEWROUTE if op == "replace" else RTM_DELROUTE, body, tag, shown, op)

    def neigh(self, op: str, tag: Hashable, ifindex: int, dst: str, lladdr: str | None = None) -> None:
        """``ip neigh replace <dst> lladdr <mac> dev <ifindex> nud permanent`` (or del)."""
        body = _NDMSG.pack(socket.AF_INET, 0, 0, ifindex, NUD_PERMANENT, 0, 0)
        body += _attr(NDA_DST, socket.inet_aton(dst))
        if lladdr and op == "replace":
            body += _attr(NDA_LLADDR, mac_bytes(lladdr))
        self._add(RTM_NEWNEIGH if op == "replace" else RTM_DELNEIGH, body, tag,
                  f"neigh {op} {dst}" + (f" lladdr {lladdr}" if lladdr else "") + f" dev #{ifindex}", op)

    def fdb(self, op: str, tag: Hashable, ifindex: int, lladdr: str, dst: str) -> None:
        """``bridge fdb replace <mac> dev <ifindex> self dst <dst> permanent`` (or del)."""
        body = _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT, NTF_SELF, 0)
        body += _attr(NDA_LLADDR, mac_bytes(lladdr)) + _attr(NDA_DST, socket.inet_aton(dst))
        self._add(RTM_NEWNEIGH if op == "replace" else RTM_DELNEIGH, body, tag,
                  f"fdb {op} {lladdr} dst {dst} dev #{ifindex}", op)

    def _add(self, kind: int, body: bytes, tag: Hashable, shown: str, op: str) -> None:
        flags = F_REQUEST | (F_CREATE | F_REPLACE if op == "replace" else 0)
        self._queue.append((kind, flags, body, tag, shown, op == "del"))

    # --- sending ----------------------------------------------------------------------
    def commit(self) -> dict[Hashable, list[NetlinkFailure]]:
        """Send every queued request; return the failures per tag and empty the queue."""
        queue, self._queue = self._queue, []
        failures: dict[Hashable, list[NetlinkFailure]] = {}
        if self.record is not None:
            self.record.extend({"netlink": shown, "lease": tag} for *_x, tag, shown, _d in queue)
            return failures
        sock = self._socket()
        for start in range(0, len(queue), self.chunk):
            part = queue[start:start + self.chunk]
            base = self._seq + 1
            self._seq += len(part)
            buf = bytearray()
            for i, (kind, flags, body, *_rest) in enumerate(part):
                if i == len(part) - 1:
                    flags |= F_ACK        # the chunk's closing ACK
                buf += _HDR.pack(_HDR.size + len(body), kind, flags, base + i, 0) + body
            sock.send(buf)
            for seq, code, detail in _read_errors(sock, base + len(part) - 1):
                if not base <= seq < base + len(part):
                    continue          # a stray reply from an earlier, aborted commit
                _kind, _flags, _body, tag, shown, is_del = part[seq - base]
                if code and not (is_del and code in _GONE):
                    failures.setdefault(tag, []).append(NetlinkFailure(shown, code, detail))
        return failures

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.bind((0, 0))
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):   # short acks, kernel messages
                try:
                    sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    pass
            self._sock = sock
        return self._sock


def _read_errors(sock: socket.socket, last_seq: int) -> Iterable[tuple[int, int, str]]:
    """Yield (seq, -errno, ext-ack text) for each error reply, until `last_seq` is acked."""
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _HDR.size <= len(data):
            length, kind, flags, seq, _pid = _HDR.unpack_from(data, offset)
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + 16)
                detail = rtnl.ext_ack(data[offset:offset + length], flags) if code else ""
                yield seq, -code, detail
                if seq == last_seq:
                    return
            offset += max((length + 3) & ~3, _HDR.size)


def ifindex(name: str) -> int | None:
    """The index of interface `name` in the current namespace, or None."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def connected_prefixes(ipr, oif: int) -> list[ipaddress.IPv4Network]:
    """Main-table prefixes reachable on-link through `oif` (no gateway): the kernel's
    connected routes and any other scope-link routes on it. `ipr` is unused (kept for
    recipes written against the pyroute2 version); the dump is ours, parsed with `struct`."""
    return _dump_connected(oif)


def _dump_connected(oif: int) -> list[ipaddress.IPv4Network]:
    nets = []
    for _type, msg in rtnl.dump(RTM_GETROUTE, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
        family, dst_len, _s, _t, table, _p, _scope, rtype, _f = _RTMSG.unpack_from(msg)
        attrs = rtnl.parse_attrs(msg, _RTMSG.size)
        table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
        if table != RT_TABLE_MAIN or rtype != RTN_UNICAST or RTA_GATEWAY in attrs or RTA_DST not in attrs:
            continue
        if RTA_OIF in attrs and struct.unpack("=I", attrs[RTA_OIF])[0] == oif:
            nets.append(ipaddress.IPv4Network((attrs[RTA_DST], dst_len)))
    return nets


def address_prefixes(oif: int) -> list[ipaddress.IPv4Network]:
    """The IPv4 prefixes of `oif`'s own addresses (what its connected routes cover)."""
    return [address.network for address in rtnl.addresses(oif)]


class OnLink:
    """Is a public IP on-link through `oif`? The interface's addresses answer almost every
    lease (one tiny dump per batch); only an IP they do not cover costs a dump of the main
    table, once per check, so a batch never pays for the size of the routing table."""

    def __init__(self, oif: int):
        self.oif = oif
        self._own = address_prefixes(oif)
        self._routes: list[ipaddress.IPv4Network] | None = None

    def __call__(self, ip: str) -> bool:
        addr = ipaddress.IPv4Address(ip)
        if any(addr in net for net in self._own):
            return True
        return any(addr in net for net in self.prefixes())

    def prefixes(self) -> list[ipaddress.IPv4Network]:
        """Every connected prefix through `oif` (for error messages); dumped on first use."""
        if self._routes is None:
            self._routes = _dump_connected(self.oif)
        return self._routes


def on_link(ip: str, prefixes: list[ipaddress.IPv4Network]) -> bool:
    addr = ipaddress.IPv4Address(ip)
    return any(addr in net for net in prefixes)


def lease_error(errors: list[NetlinkFailure]) -> TemporaryError:
    """A lease's kernel failures as one retryable error (replace/del are idempotent)."""
    return TemporaryError("; ".join(map(str, errors)))


def raise_failures(failures: dict[str, BaseException], leases: Sequence[RemoteLease]) -> None:
    """A single-lease call raises that lease's own error; a batch raises BatchError."""
    if not failures:
        return
    if len(leases) == 1 and key_of(leases[0]) in failures:
        raise failures[key_of(leases[0])]
    raise BatchError(failures)


def key_of(lease: RemoteLease) -> str:
    """The tag naming a lease in BatchError: flannel's key, or the subnet when unset."""
    return lease.key or str(lease.subnet)


class BatchedRecipe(Hook):
    """A recipe whose single and batch calls are all one ``_apply(op, leases, ctx)``.

    ``op`` is "replace" for SubnetAdd and "del" for SubnetRemove; `_apply` raises
    BatchError naming only the leases that failed.
    """

    def subnet_add(self, lease: RemoteLease, ctx: HookContext) -> None:
        self._apply("replace", [lease], ctx)

    def subnet_remove(self, lease: RemoteLease, ctx: HookContext) -> None:
        self._apply("del", [lease], ctx)

    def subnet_add_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._apply("replace", leases, ctx)

    def subnet_remove_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._apply("del", leases, ctx)

    def _apply(self, op: str, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        raise NotImplementedError
