"""The kernel's neighbour tables (ARP for IPv4, NDP for IPv6): their limits and their fill.

Each table is one per kernel, shared by every network namespace: its garbage-collection
thresholds ``gc_thresh1/2/3`` are sysctls of the initial namespace only
(``net.ipv4.neigh.default.gc_thresh3`` …), and ``/proc/net/stat/arp_cache`` (``ndisc_cache``)
counts the entries of all namespaces. Past ``gc_thresh3`` the kernel refuses new entries
(``table_fulls`` grows, senders get ENOBUFS: "No buffer space available"). Neither file
exists inside a child namespace, so readers there get None.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

STAT_FILES = {"ipv4": "arp_cache", "ipv6": "ndisc_cache"}


@dataclass(frozen=True)
class NeighTable:
    family: str                        # "ipv4" or "ipv6"
    thresholds: tuple[int, int, int]   # gc_thresh1, gc_thresh2, gc_thresh3
    entries: int
    table_fulls: int                   # allocations refused because the table was full


def sysctl_name(family: str, level: int) -> str:
    return f"net.{family}.neigh.default.gc_thresh{level}"


def sysctl_path(name: str, proc: str = "/proc") -> str:
    return os.path.join(proc, "sys", *name.split("."))


def read_table(family: str, proc: str = "/proc") -> NeighTable | None:
    """The table's limits and fill, or None where they cannot be read (a child namespace)."""
    try:
        thresholds = tuple(int(_read(sysctl_path(sysctl_name(family, i), proc))) for i in (1, 2, 3))
        with open(os.path.join(proc, "net", "stat", STAT_FILES[family])) as handle:
            lines = handle.read().split("\n")
    except (OSError, ValueError):
        return None
    header = lines[0].split()
    rows = [[int(v, 16) for v in line.split()] for line in lines[1:] if line.strip()]
    if not rows or "entries" not in header or "table_fulls" not in header:
        return None
    # One row per CPU: `entries` is the table's (the same on every row), the rest per CPU.
    entries = rows[0][header.index("entries")]
    fulls = sum(row[header.index("table_fulls")] for row in rows)
    return NeighTable(family, (thresholds[0], thresholds[1], thresholds[2]), entries, fulls)


def write_sysctl(name: str, value: int, proc: str = "/proc") -> None:
    with open(sysctl_path(name, proc), "w") as handle:
        handle.write(f"{value}\n")


def read_sysctl(name: str, proc: str = "/proc") -> int:
    return int(_read(sysctl_path(name, proc)))


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read().strip()


WARN_AT = 0.75   # share of gc_thresh3 the peers' entries may reach before the one warning


class PeerCount:
    """The peers a dataplane has programmed, and one warning when they near gc_thresh3.

    A node reaches each peer it talks to on the underlay (vxlan's VTEPs, host-gw's
    gateways) through an ARP entry; past gc_thresh3 the kernel refuses new ones and
    traffic to new peers fails. The limit is read once; None (a child namespace, where it
    cannot be read) means there is nothing to warn about."""

    def __init__(self, what: str, proc: str = "/proc"):
        self.what, self.proc = what, proc
        self._peers: set[str] = set()
        self._limit: int | None | bool = False       # False: not read yet
        self._warned = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._peers)

    def removed(self, key: str) -> None:
        with self._lock:
            self._peers.discard(key)

    def added(self, key: str, warn: Callable[..., None]) -> None:
        with self._lock:
            self._peers.add(key)
            if self._warned:
                return
            if self._limit is False:
                table = read_table("ipv4", self.proc)
                self._limit = None if table is None else table.thresholds[2]
            if self._limit is None or len(self._peers) < WARN_AT * int(self._limit):
                return
            table = read_table("ipv4", self.proc)
            if table is None:
                return
            self._warned = True
            needed = len(self._peers)
        warn("%s: %d peers need ~%d neighbour entries (an underlay ARP entry each), near "
             "net.ipv4.neigh.default.gc_thresh3 = %d (%d entries in use); past it the kernel "
             "refuses new entries and traffic to new peers fails: raise it, e.g. sysctl -w "
             "net.ipv4.neigh.default.gc_thresh1=%d net.ipv4.neigh.default.gc_thresh2=%d "
             "net.ipv4.neigh.default.gc_thresh3=%d", self.what, needed, needed, table.thresholds[2],
             table.entries, 2 * needed, 4 * needed, 8 * needed)
