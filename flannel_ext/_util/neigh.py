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
