"""All-pairs pod-to-pod probing with real packets, from one process.

A socket belongs to the network namespace it was created in, for its whole life. So the
prober enters each source pod's namespace (setns) only to create its sockets, returns,
and then drives every TCP connect and ICMP echo at once with one selector: no process
per pair, and the whole matrix costs one round trip when the network works.

TCP: connect to the destination's listener, which answers with its pod name (proves the
right pod answered). ICMP: a raw socket per source pod, echo requests with a per-source
identifier. Unanswered probes are retried until the deadline (refused/unreachable may
be a dataplane still being programmed).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def netns(name: str):
    """Run the block with this thread in namespace `name`; always switch back."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class Target:
    name: str   # pod name == its namespace
    ip: str


@dataclass
class Result:
    tcp: bool = False
    icmp: bool | None = None   # None: ICMP not attempted
    error: str = ""            # the last TCP failure, for the report


@dataclass(eq=False)   # identity hash: the open connections are a set
class _Conn:
    src: int
    dst: int
    sock: socket.socket
    got: bytes = b""
    connected: bool = False
    started: float = field(default_factory=time.monotonic)
    tries: int = 1


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    payload = b"flannel-ext-lab"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def probe(pods: list[Target], port: int, timeout: float = 3.0, icmp: bool = True,
          protocol: str = "TCP") -> dict:
    """Probe every ordered pair of distinct pods; returns {(src, dst): Result} by name.

    `protocol` TCP or SCTP (a stream connect each; `Result.tcp` is its outcome); UDP is
    `probe_udp`.
    """
    proto = socket.IPPROTO_SCTP if protocol == "SCTP" else 0
    results = {(a.name, b.name): Result(icmp=False if icmp else None)
               for a in pods for b in pods if a.name != b.name}
    sel = selectors.DefaultSelector()
    conns: set[_Conn] = set()
    raws: dict[int, socket.socket] = {}
    base = os.getpid() & 0x7FFF

    def open_tcp(src: int, dst: int, tries: int = 1, sock: socket.socket | None = None) -> None:
        if sock is None:
            with netns(pods[src].name):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        sock.setblocking(False)
        conn = _Conn(src, dst, sock, tries=tries)
        rc = sock.connect_ex((pods[dst].ip, port))
        if rc not in (0, errno.EINPROGRESS):
            fail(conn, rc)
            return
        conns.add(conn)
        sel.register(sock, selectors.EVENT_WRITE, conn)

    def fail(conn: _Conn, err: int | str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        conn.sock.close()
        conns.discard(conn)
        key = (pods[conn.src].name, pods[conn.dst].name)
        results[key].error = err if isinstance(err, str) else os.strerror(err)
        retry.append((time.monotonic() + 0.1 * min(conn.tries, 5), conn.src, conn.dst, conn.tries + 1))

    retry: list[tuple[float, int, int, int]] = []
    for i in range(len(pods)):
        with netns(pods[i].name):  # one switch per source pod for all its sockets
            socks = {j: socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
                     for j in range(len(pods)) if j != i}
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) if icmp else None
        for j, sock in socks.items():
            open_tcp(i, j, sock=sock)
        if raw is not None:
            raw.setblocking(False)
            raws[i] = raw
            sel.register(raw, selectors.EVENT_READ, ("icmp", i))
    next_ping = 0.0
    index = {p.ip: j for j, p in enumerate(pods)}
    # From now: opening 9,900 sockets (a 100-node lab) takes a while on a busy machine.
    deadline = time.monotonic() + timeout

    def pending() -> bool:
        return any(not r.tcp or r.icmp is False for r in results.values())

    # The scans over every pair (what is pending, which connects are stale) run every
    # 0.05 s, not per selector wake-up: at 9,900 pairs they would cost more than the probes.
    next_scan = 0.0
    try:
        while (now := time.monotonic()) < deadline:
            scan = now >= next_scan
            if scan:
                if not pending():
                    break
                next_scan = now + 0.05
            if icmp and now >= next_ping:  # (re)send unanswered echoes every 0.3 s
                for i, raw in raws.items():
                    for j, dst in enumerate(pods):
                        if i != j and results[(pods[i].name, dst.name)].icmp is False:
                            with contextlib.suppress(OSError):
                                raw.sendto(_echo(base + i, j), (dst.ip, 0))
                next_ping = now + 0.3
            for item in [r for r in retry if r[0] <= now]:
                retry.remove(item)
                open_tcp(item[1], item[2], item[3])
            for key, _events in sel.select(timeout=0.02):
                data = key.data
                if isinstance(data, tuple):
                    _read_icmp(raws[data[1]], data[1], pods, index, base, results)
                elif not data.connected:
                    err = data.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(data, err)
                    else:
                        data.connected = True
                        sel.modify(data.sock, selectors.EVENT_READ, data)
                else:
                    _read_tcp(data, pods, results, sel, conns)
            # After handling what arrived (a slow pass must not discard answered SYNs): a
            # SYN queued behind an unresolved neighbour may be dropped, and the kernel's
            # own retransmit waits 1 s, so start a fresh attempt after 0.25 s instead.
            now = time.monotonic()
            for conn in [c for c in conns if not c.connected and now - c.started > 0.25] if scan else ():
                sel.unregister(conn.sock)
                conn.sock.close()
                conns.discard(conn)
                open_tcp(conn.src, conn.dst, conn.tries + 1)
    finally:
        _close(sel, [conn.sock for conn in conns], raws.values())
    _settle(results)
    return results


def _close(sel: selectors.BaseSelector, *groups) -> None:
    for group in groups:
        for sock in group:
            sock.close()
    sel.close()


def _settle(results: dict) -> None:
    """A probe that answered has no error; one that never did timed out."""
    for r in results.values():
        if r.tcp:
            r.error = ""
        elif not r.error:
            r.error = "timeout"


def _read_tcp(conn: _Conn, pods, results, sel, conns) -> None:
    try:
        chunk = conn.sock.recv(256)
    except OSError as exc:
        chunk, err = b"", exc.strerror
    else:
        err = ""
    conn.got += chunk
    if chunk and not conn.got.endswith(b"\n"):
        return
    sel.unregister(conn.sock)
    conn.sock.close()
    conns.discard(conn)
    res = results[(pods[conn.src].name, pods[conn.dst].name)]
    answer = conn.got.decode(errors="replace").strip()
    if answer == pods[conn.dst].name:
        res.tcp = True
    else:  # e.g. a wrong pod answered: never a pass, and not worth retrying
        res.error = err or (f"answered as {answer!r}" if answer else "closed without answer")


def _read_icmp(raw: socket.socket, i: int, pods, index, base, results) -> None:
    while True:
        try:
            packet, (addr, _) = raw.recvfrom(2048)
        except BlockingIOError:
            return
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < ihl + 8:
            continue
        kind, _, _, ident, seq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
        j = index.get(addr)
        if kind == 0 and ident == base + i and j == seq and j is not None:
            results[(pods[i].name, pods[j].name)].icmp = True


def probe_udp(pods: list[Target], port: int, timeout: float = 1.0) -> dict:
    """UDP for every ordered pair: a datagram from inside the source pod, answered with
    the destination's name and the datagram (podserver); resent every 0.1 s until
    answered or the deadline. `Result.tcp` is the outcome (the port probe passed)."""
    results = {(a.name, b.name): Result() for a in pods for b in pods if a.name != b.name}
    sel = selectors.DefaultSelector()
    socks: dict[tuple[int, int], socket.socket] = {}
    try:
        for i, src in enumerate(pods):
            with netns(src.name):
                for j in range(len(pods)):
                    if i != j:
                        socks[(i, j)] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for j, dst in enumerate(pods):
                if i != j:
                    sock = socks[(i, j)]
                    sock.setblocking(False)
                    sock.connect((dst.ip, port))
                    sel.register(sock, selectors.EVENT_READ, (i, j))
        deadline, next_send = time.monotonic() + timeout, 0.0
        pending = set(socks)
        while pending and (now := time.monotonic()) < deadline:
            if now >= next_send:
                for i, j in pending:
                    with contextlib.suppress(OSError):  # e.g. ECONNREFUSED from an earlier try
                        socks[(i, j)].send(f"probe {i} {j}".encode())
                next_send = now + 0.1
            for key, _ in sel.select(timeout=0.02):
                i, j = key.data
                res = results[(pods[i].name, pods[j].name)]
                try:
                    data = key.fileobj.recv(2048)  # type: ignore[union-attr]
                except OSError as exc:
                    res.error = exc.strerror or str(exc)
                    continue
                if data == f"{pods[j].name}\nprobe {i} {j}".encode():
                    res.tcp, res.error = True, ""
                    pending.discard((i, j))
                    sel.unregister(key.fileobj)
                else:
                    res.error = f"answered {data[:40]!r}"
    finally:
        _close(sel, socks.values())
    _settle(results)
    return results
