"""Single rtnetlink requests and dumps, packed with `struct`: links, addresses, tables.

The recipes' one-off work (the vxlan device, its address, on-link checks) used to go
through pyroute2, whose import alone costs a daemon ~20 MB of RSS and 0.2 s of start-up.
These few messages are small and fixed-layout. Everything acts on the *current* network
namespace; failures raise OSError with the kernel's errno (and extended-ack text).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from collections.abc import Iterator

NETLINK_ROUTE, SOL_NETLINK, NETLINK_EXT_ACK = 0, 270, 11
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
F_REQUEST, F_ACK, F_DUMP, F_REPLACE, F_EXCL, F_CREATE = 0x1, 0x4, 0x300, 0x100, 0x200, 0x400
F_CAPPED, F_ACK_TLVS = 0x100, 0x200   # flags of an error reply (echo trimmed / TLVs follow)
NLA_F_NESTED = 0x8000
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 4, 7, 15
IFA_ADDRESS, IFA_LOCAL = 1, 2
RT_SCOPE_HOST = 254

HDR = struct.Struct("=IHHII")          # nlmsghdr: len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")    # family, prefixlen, flags, scope, index


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def parse_attrs(payload: bytes, offset: int = 0) -> dict[int, bytes]:
    found = {}
    while offset + 4 <= len(payload):
        alen, akind = struct.unpack_from("=HH", payload, offset)
        if alen < 4:
            break
        found[akind & 0x3FFF] = payload[offset + 4:offset + alen]
        offset += (alen + 3) & ~3
    return found


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.bind((0, 0))
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    except OSError:
        pass
    return sock


def ext_ack(msg: bytes, flags: int) -> str:
    """The kernel's explanation (NLMSGERR_ATTR_MSG) in error reply `msg` (header first), or ""."""
    if not flags & F_ACK_TLVS:
        return ""
    # header(16) + error(4) + the echoed request: its header only when capped
    (echoed,) = struct.unpack_from("=I", msg, 20)
    start = 20 + (HDR.size if flags & F_CAPPED else (echoed + 3) & ~3)
    return parse_attrs(msg, start).get(1, b"").rstrip(b"\0").decode(errors="replace")


def _error(data: bytes, offset: int, length: int, flags: int) -> OSError | None:
    (code,) = struct.unpack_from("=i", data, offset + 16)
    if not code:
        return None
    detail = ext_ack(data[offset:offset + length], flags)
    return OSError(-code, os.strerror(-code) + (f" ({detail})" if detail else ""))


def _messages(sock: socket.socket) -> Iterator[tuple[int, bytes, OSError | None]]:
    """(type, payload, error) of each message the kernel sends back, for as long as asked."""
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + HDR.size <= len(data):
            length, mtype, mflags, _seq, _pid = HDR.unpack_from(data, offset)
            error = _error(data, offset, length, mflags) if mtype == NLMSG_ERROR else None
            yield mtype, data[offset + HDR.size:offset + length], error
            offset += max((length + 3) & ~3, HDR.size)


def request(kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
    """Send one request (with ACK); returns the replies before the ACK, raises its error."""
    replies: list[tuple[int, bytes]] = []
    with _socket() as sock:
        sock.send(HDR.pack(HDR.size + len(body), kind, F_REQUEST | F_ACK | flags, 1, 0) + body)
        for mtype, payload, error in _messages(sock):
            if error is not None:
                raise error
            if mtype == NLMSG_ERROR:
                return replies
            replies.append((mtype, payload))
    return replies


def dump(kind: int, body: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each reply to an RTM_GET* dump request."""
    with _socket() as sock:
        sock.send(HDR.pack(HDR.size + len(body), kind, F_REQUEST | F_DUMP, 1, 0) + body)
        for mtype, payload, error in _messages(sock):
            if error is not None:
                raise error
            if mtype == NLMSG_DONE:
                return
            if mtype != NLMSG_ERROR:
                yield mtype, payload


# --- links -------------------------------------------------------------------------------
@dataclass
class Link:
    index: int
    name: str
    address: str = ""                     # MAC
    mtu: int = 0
    up: bool = False
    kind: str = ""                        # IFLA_INFO_KIND, e.g. "vxlan"
    vxlan: dict[str, object] = field(default_factory=dict)   # id, link, local, port, learning


def _u32(data: bytes) -> int:
    return int(struct.unpack("=I", data[:4])[0])


def _parse_link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFINFOMSG.size)
    link = Link(index, attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
                ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
                _u32(attrs[IFLA_MTU]) if IFLA_MTU in attrs else 0, bool(flags & IFF_UP))
    info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
    link.kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
    if link.kind == "vxlan":
        data = parse_attrs(info.get(IFLA_INFO_DATA, b""))
        link.vxlan = {
            "id": _u32(data[IFLA_VXLAN_ID]) if IFLA_VXLAN_ID in data else None,
            "link": _u32(data[IFLA_VXLAN_LINK]) if IFLA_VXLAN_LINK in data else None,
            "local": socket.inet_ntoa(data[IFLA_VXLAN_LOCAL]) if IFLA_VXLAN_LOCAL in data else None,
            "port": struct.unpack("!H", data[IFLA_VXLAN_PORT][:2])[0] if IFLA_VXLAN_PORT in data else None,
            "learning": data[IFLA_VXLAN_LEARNING][0] if IFLA_VXLAN_LEARNING in data else None,
        }
    return link


def link_get(name: str) -> Link | None:
    """The link called `name` in the current namespace, or None."""
    try:
        replies = request(RTM_GETLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) +
                          attr(IFLA_IFNAME, name.encode() + b"\0"))
    except OSError as exc:
        if exc.errno == 19:                # ENODEV
            return None
        raise
    return next((_parse_link(p) for t, p in replies if t == RTM_NEWLINK), None)


def _vxlan_info(data: list[bytes]) -> bytes:
    return nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"vxlan"), nested(IFLA_INFO_DATA, *data))


def link_add_vxlan(name: str, vni: int, link: int, local: str | None, port: int | None,
                   learning: bool = False) -> None:
    data = [attr(IFLA_VXLAN_ID, struct.pack("=I", vni)), attr(IFLA_VXLAN_LINK, struct.pack("=I", link)),
            attr(IFLA_VXLAN_LEARNING, bytes([int(learning)]))]
    if local:
        data.append(attr(IFLA_VXLAN_LOCAL, socket.inet_aton(local)))
    if port:
        data.append(attr(IFLA_VXLAN_PORT, struct.pack("!H", port)))
    request(RTM_NEWLINK, F_CREATE | F_EXCL, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) +
            attr(IFLA_IFNAME, name.encode() + b"\0") + _vxlan_info(data))


def link_set(index: int, *, mtu: int | None = None, up: bool | None = None,
             vxlan_local: str | None = None) -> None:
    attrs = b""
    if mtu is not None:
        attrs += attr(IFLA_MTU, struct.pack("=I", mtu))
    if vxlan_local is not None:
        attrs += _vxlan_info([attr(IFLA_VXLAN_LOCAL, socket.inet_aton(vxlan_local))])
    flags, change = (IFF_UP if up else 0, IFF_UP) if up is not None else (0, 0)
    request(RTM_NEWLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs)


def link_del(index: int) -> None:
    request(RTM_DELLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))


# --- addresses ---------------------------------------------------------------------------
def addresses(index: int) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses of link `index` (address/prefix)."""
    found = []
    for _type, msg in dump(RTM_GETADDR, IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)):
        family, prefixlen, _flags, _scope, owner = IFADDRMSG.unpack_from(msg)
        attrs = parse_attrs(msg, IFADDRMSG.size)
        local = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if family == socket.AF_INET and owner == index and local:
            found.append(ipaddress.IPv4Interface((local, prefixlen)))
    return found


def local_addresses() -> list[str]:
    """Every IPv4 and IPv6 address of this namespace whose scope is not host (loopback's)."""
    found = []
    for _type, msg in dump(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        _family, _prefixlen, _flags, scope, _owner = IFADDRMSG.unpack_from(msg)
        attrs = parse_attrs(msg, IFADDRMSG.size)
        local = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if scope != RT_SCOPE_HOST and local and len(local) in (4, 16):
            found.append(str(ipaddress.ip_address(local)))
    return found


def _addr(kind: int, flags: int, index: int, address: ipaddress.IPv4Interface) -> None:
    packed = address.ip.packed
    request(kind, flags, IFADDRMSG.pack(socket.AF_INET, address.network.prefixlen, 0, 0, index) +
            attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed))


def addr_replace(index: int, address: ipaddress.IPv4Interface) -> None:
    _addr(RTM_NEWADDR, F_CREATE | F_REPLACE, index, address)


def addr_del(index: int, address: ipaddress.IPv4Interface) -> None:
    _addr(RTM_DELADDR, 0, index, address)
